#!/usr/bin/env bash
# A private PostgreSQL cluster and RabbitMQ node on loopback for the disruptive fault scenarios,
# so that stopping them disturbs nobody else's servers. Needs what scripts/services.sh installed.
#
#   bench/private-servers.sh up | down | env
#   bench/private-servers.sh rabbit-stop | rabbit-start | pg-stop | pg-start
set -euo pipefail

DIR="${CONVEYOR_FAULTS_DIR:-/tmp/conveyor-faults}"
PG_VERSION="${CONVEYOR_FAULTS_PG_VERSION:-$(ls /usr/lib/postgresql | sort -n | tail -n1)}"
PG_CLUSTER=conveyor_faults
PG_PORT="${CONVEYOR_FAULTS_PG_PORT:-5433}"
RABBIT_PORT="${CONVEYOR_FAULTS_RABBIT_PORT:-5673}"
RABBIT_MGMT_PORT="${CONVEYOR_FAULTS_RABBIT_MGMT_PORT:-15673}"
RABBIT_NODE="conveyor-faults@localhost"
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"

log() { printf '[private-servers] %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

rabbit() {
  local program=$1; shift
  runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$RABBIT_PORT" \
    RABBITMQ_DIST_PORT=$((RABBIT_PORT + 20000)) RABBITMQ_CONF_ENV_FILE="$DIR/rabbit/rabbitmq-env.conf" \
    RABBITMQ_CONFIG_FILE="$DIR/rabbit/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/rabbit/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$DIR/rabbit/mnesia" RABBITMQ_LOG_BASE="$DIR/rabbit/log" RABBITMQ_PID_FILE="$DIR/rabbit/pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "/usr/lib/rabbitmq/bin/$program" "$@"
}

up() {
  if ! port_open "$RABBIT_PORT"; then
    log "starting RabbitMQ node $RABBIT_NODE on 127.0.0.1:$RABBIT_PORT"
    mkdir -p "$DIR/rabbit"
    cat > "$DIR/rabbit/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$RABBIT_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $RABBIT_MGMT_PORT
loopback_users = none
CONF
    echo '[rabbitmq_management].' > "$DIR/rabbit/enabled_plugins"
    : > "$DIR/rabbit/rabbitmq-env.conf"
    chown -R rabbitmq:rabbitmq "$DIR/rabbit"
    rabbit rabbitmq-server > "$DIR/rabbit/server.log" 2>&1 &
    rabbit rabbitmqctl -n "$RABBIT_NODE" wait --timeout 120 "$DIR/rabbit/pid" >/dev/null
    rabbit rabbitmqctl -n "$RABBIT_NODE" await_startup >/dev/null
  fi
  for _ in $(seq 60); do port_open "$RABBIT_MGMT_PORT" && break; sleep 1; done

  if ! pg_lsclusters -h | awk '{print $2}' | grep -qx "$PG_CLUSTER"; then
    log "creating PostgreSQL $PG_VERSION cluster $PG_CLUSTER on port $PG_PORT"
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER" -p "$PG_PORT" >/dev/null
    sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/; s/^#\?max_connections.*/max_connections = 300/" \
      "/etc/postgresql/$PG_VERSION/$PG_CLUSTER/postgresql.conf"
  fi
  port_open "$PG_PORT" || pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
  runuser -u postgres -- psql -p "$PG_PORT" -qtA -c "DO \$\$BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'conveyor') THEN
      CREATE ROLE conveyor LOGIN CREATEDB PASSWORD 'conveyor'; END IF; END\$\$;" >/dev/null
  runuser -u postgres -- psql -p "$PG_PORT" -qtA -c "SELECT 1 FROM pg_database WHERE datname = 'conveyor'" | grep -q 1 \
    || runuser -u postgres -- psql -p "$PG_PORT" -qtA -c "CREATE DATABASE conveyor OWNER conveyor" >/dev/null
}

down() {
  if port_open "$RABBIT_PORT"; then log "stopping $RABBIT_NODE"; rabbit rabbitmqctl -n "$RABBIT_NODE" stop >/dev/null 2>&1 || true; fi
  rm -rf "$DIR/rabbit"
  if pg_lsclusters -h | awk '{print $2}' | grep -qx "$PG_CLUSTER"; then
    log "dropping PostgreSQL cluster $PG_CLUSTER"; pg_dropcluster "$PG_VERSION" "$PG_CLUSTER" --stop || true
  fi
}

print_env() {
  cat <<ENV
export RabbitMq__Host=127.0.0.1
export RabbitMq__Port=$RABBIT_PORT
export RabbitMq__ManagementPort=$RABBIT_MGMT_PORT
export RabbitMq__Username=guest
export RabbitMq__Password=guest
export ConnectionStrings__Conveyor='Host=127.0.0.1;Port=$PG_PORT;Database=conveyor;Username=conveyor;Password=conveyor'
export CONVEYOR_FAULTS_RABBIT_STOP='$SELF rabbit-stop'
export CONVEYOR_FAULTS_RABBIT_START='$SELF rabbit-start'
export CONVEYOR_FAULTS_PG_STOP='$SELF pg-stop'
export CONVEYOR_FAULTS_PG_START='$SELF pg-start'
ENV
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) print_env ;;
  rabbit-stop) rabbit rabbitmqctl -n "$RABBIT_NODE" stop_app >/dev/null ;;
  rabbit-start) rabbit rabbitmqctl -n "$RABBIT_NODE" start_app >/dev/null && rabbit rabbitmqctl -n "$RABBIT_NODE" await_startup >/dev/null ;;
  pg-stop) pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop ;;
  pg-start) pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start ;;
  *) sed -n '2,7p' "$0" >&2; exit 2 ;;
esac
