#!/usr/bin/env bash
# Brings up the RabbitMQ and PostgreSQL that Conveyor needs, on loopback only.
#
#   scripts/services.sh up     install what is missing, start what is not running, create
#                              the conveyor vhost/user and database; prints the env to use
#   scripts/services.sh down   stop only the servers this script started
#   scripts/services.sh env    print the connection settings as shell exports
#
# Servers that already run are reused and left running. Settings can be overridden with
# CONVEYOR_RABBIT_* / CONVEYOR_PG_* variables (see README.md).
set -euo pipefail

STATE_DIR="${CONVEYOR_STATE_DIR:-/tmp/conveyor-services}"
RABBIT_PORT="${CONVEYOR_RABBIT_PORT:-5672}"
RABBIT_MGMT_PORT="${CONVEYOR_RABBIT_MGMT_PORT:-15672}"
RABBIT_USER="${CONVEYOR_RABBIT_USER:-conveyor}"
RABBIT_PASS="${CONVEYOR_RABBIT_PASSWORD:-conveyor}"
RABBIT_VHOST="${CONVEYOR_RABBIT_VHOST:-conveyor}"
PG_PORT="${CONVEYOR_PG_PORT:-5432}"
PG_USER="${CONVEYOR_PG_USER:-conveyor}"
PG_PASS="${CONVEYOR_PG_PASSWORD:-conveyor}"
PG_DB="${CONVEYOR_PG_DATABASE:-conveyor}"

log() { printf '[services] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Installs Debian packages without letting them start their services. On a machine with an init
# system, the maintainer scripts would start rabbitmq-server at install time listening on every
# interface (and epmd with it); this script would then find the port open and reuse that broker.
# A policy-rc.d that answers 101 ("action forbidden") is what invoke-rc.d and deb-systemd-invoke
# ask first. One that is already there (container images ship one) is left alone.
apt_install() {
  local policy=/usr/sbin/policy-rc.d placed="" status=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    placed=1
  fi
  as_root apt-get update -qq >&2 || status=$?
  if [ "$status" = 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || status=$?
  fi
  if [ -n "$placed" ]; then as_root rm -f "$policy"; fi
  return "$status"
}

# A server this script did not start may listen beyond loopback; say so rather than reuse it quietly.
warn_if_exposed() {
  local port=$1 what=$2 exposed
  command -v ss >/dev/null 2>&1 || return 0
  exposed=$(ss -ltnH "sport = :$port" 2>/dev/null | awk '{print $4}' | grep -vE '^(127\.[0-9.]+|\[::1\]|\[::ffff:127\.[0-9.]+\]):[0-9]+$' || true)
  if [ -n "$exposed" ]; then
    log "WARNING: $what on port $port also listens on $(echo "$exposed" | tr '\n' ' ')- not loopback only; it was not started by this script"
  fi
}

# Runs a command that starts a daemon with none of this script's descriptors past stderr. A daemon that
# inherits one keeps it open for as long as it runs: the pipe a CI runner or `$(services.sh up)` reads
# (the caller would wait for its end for ever), or the lock `up` holds (lock_up), which then stays taken
# and makes every later `up` wait for ever.
without_inherited_fds() {
  (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    "$@"
  )
}

wait_port() {
  local port=$1 what=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do port_open "$port" && return 0; sleep 1; done
  log "$what did not open port $port"; return 1
}

print_env() {
  cat <<ENV
export RabbitMq__Host=127.0.0.1
export RabbitMq__Port=$RABBIT_PORT
export RabbitMq__VirtualHost=$RABBIT_VHOST
export RabbitMq__Username=$RABBIT_USER
export RabbitMq__Password=$RABBIT_PASS
export RabbitMq__ManagementPort=$RABBIT_MGMT_PORT
export ConnectionStrings__Conveyor='Host=127.0.0.1;Port=$PG_PORT;Database=$PG_DB;Username=$PG_USER;Password=$PG_PASS'
ENV
}

rabbit_up() {
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "installing rabbitmq-server from Debian packages"
    apt_install rabbitmq-server
  fi
  if port_open "$RABBIT_PORT"; then
    log "RabbitMQ already listening on $RABBIT_PORT; reusing it"
    if [ ! -f "$STATE_DIR/rabbitmq.started" ]; then
      warn_if_exposed "$RABBIT_PORT" RabbitMQ
      warn_if_exposed "$RABBIT_MGMT_PORT" "RabbitMQ management"
    fi
    as_root rabbitmq-plugins enable rabbitmq_shovel rabbitmq_shovel_management >/dev/null 2>&1 \
      || log "could not enable the shovel plugins (only bench/ErrorQueueMove needs them)"
  else
    log "starting RabbitMQ on 127.0.0.1:$RABBIT_PORT"
    # Loopback only: AMQP, management, epmd and Erlang distribution.
    as_root tee /etc/rabbitmq/rabbitmq-env.conf >/dev/null <<CONF
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$RABBIT_PORT
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
CONF
    as_root tee /etc/rabbitmq/rabbitmq.conf >/dev/null <<CONF
listeners.tcp.default = 127.0.0.1:$RABBIT_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $RABBIT_MGMT_PORT
loopback_users = none
CONF
    # Shovel: only the error-queue benchmark's comparison (bench/ErrorQueueMove) uses it.
    as_root rabbitmq-plugins enable --offline rabbitmq_management rabbitmq_shovel rabbitmq_shovel_management >/dev/null
    mkdir -p "$STATE_DIR"
    without_inherited_fds as_root sh -c 'nohup rabbitmq-server </dev/null >/tmp/conveyor-rabbitmq.log 2>&1 &'
    touch "$STATE_DIR/rabbitmq.started"
    wait_port "$RABBIT_PORT" RabbitMQ 180
    as_root rabbitmqctl await_startup >/dev/null
  fi
  if as_root rabbitmqctl list_users -q 2>/dev/null | awk '{print $1}' | grep -qx "$RABBIT_USER"; then
    as_root rabbitmqctl change_password "$RABBIT_USER" "$RABBIT_PASS" >/dev/null
  else
    as_root rabbitmqctl add_user "$RABBIT_USER" "$RABBIT_PASS" >/dev/null
  fi
  as_root rabbitmqctl set_user_tags "$RABBIT_USER" administrator >/dev/null
  as_root rabbitmqctl list_vhosts -q | grep -qx "$RABBIT_VHOST" || as_root rabbitmqctl add_vhost "$RABBIT_VHOST" >/dev/null
  as_root rabbitmqctl set_permissions -p "$RABBIT_VHOST" "$RABBIT_USER" '.*' '.*' '.*' >/dev/null
  wait_port "$RABBIT_MGMT_PORT" "RabbitMQ management" 60
}

pg_psql() { as_root runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qtA "$@"; }

pg_up() {
  if ! command -v pg_lsclusters >/dev/null 2>&1; then
    log "installing postgresql from Debian packages"
    apt_install postgresql
  fi
  if port_open "$PG_PORT"; then
    log "PostgreSQL already listening on $PG_PORT; reusing it"
    [ -f "$STATE_DIR/postgres.started" ] || warn_if_exposed "$PG_PORT" PostgreSQL
  else
    local version cluster
    read -r version cluster _ < <(pg_lsclusters -h | awk -v p="$PG_PORT" '$3 == p {print $1, $2}' | head -n1) || true
    if [ -z "${version:-}" ]; then
      version=$(ls /usr/lib/postgresql | sort -n | tail -n1); cluster=conveyor
      log "creating PostgreSQL $version cluster '$cluster' on port $PG_PORT"
      as_root pg_createcluster "$version" "$cluster" -p "$PG_PORT" >/dev/null
    fi
    log "starting PostgreSQL $version/$cluster on 127.0.0.1:$PG_PORT"
    as_root sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/" "/etc/postgresql/$version/$cluster/postgresql.conf"
    as_root sed -i "s/^#\?max_connections.*/max_connections = 300/" "/etc/postgresql/$version/$cluster/postgresql.conf"
    # stdout is for `env`/`up` output that callers eval: pg_ctlcluster can say "Removed stale pid file."
    without_inherited_fds as_root pg_ctlcluster "$version" "$cluster" start >&2
    mkdir -p "$STATE_DIR"
    echo "$version $cluster" > "$STATE_DIR/postgres.started"
    wait_port "$PG_PORT" PostgreSQL 60
  fi
  pg_psql -c "DO \$\$BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
      CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASS';
    ELSE ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASS'; END IF; END\$\$;"
  pg_psql -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1 \
    || pg_psql -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
}

down() {
  if [ -f "$STATE_DIR/rabbitmq.started" ]; then
    log "stopping RabbitMQ"; as_root rabbitmqctl stop >/dev/null 2>&1 || true
    rm -f "$STATE_DIR/rabbitmq.started"
  fi
  if [ -f "$STATE_DIR/postgres.started" ]; then
    read -r version cluster < "$STATE_DIR/postgres.started"
    log "stopping PostgreSQL $version/$cluster"; as_root pg_ctlcluster "$version" "$cluster" stop || true
    rm -f "$STATE_DIR/postgres.started"
  fi
}

# One `up` at a time: the quick start's two commands (run, test) started together raced on installs,
# server starts and the role's ALTER ROLE ("tuple concurrently updated"), and one of them gave up. The
# second now waits for the first and then finds everything up. The lock goes with this process (the
# servers it starts do not inherit it: without_inherited_fds). The wait is bounded, so that a holder
# that never lets go is reported instead of hanging the caller.
lock_up() {
  local seconds="${CONVEYOR_UP_LOCK_SECONDS:-900}"
  mkdir -p "$STATE_DIR" 2>/dev/null || return 0
  command -v flock >/dev/null || return 0
  { exec 9>>"$STATE_DIR/up.lock"; } 2>/dev/null || return 0
  if ! flock -w "$seconds" 9; then
    log "another 'services.sh up' has held $STATE_DIR/up.lock for $seconds s; these processes have it open:"
    exec 9>&-
    find /proc/[0-9]*/fd -lname "$STATE_DIR/up.lock" 2>/dev/null | cut -d/ -f3 | sort -un | while read -r pid; do
      log "  pid $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)"
    done
    exit 1
  fi
}

case "${1:-up}" in
  up) lock_up; rabbit_up; pg_up; print_env ;;
  down) down ;;
  env) print_env ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
