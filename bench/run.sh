#!/usr/bin/env bash
# Benchmarks and fault injection: builds Release, brings up RabbitMQ and PostgreSQL
# (scripts/services.sh), runs what is asked, prints the tables and rewrites docs/benchmarks.md.
#
#   bench/run.sh [all]               every benchmark, then the fault scenarios (10,000 jobs)
#   bench/run.sh consume|enqueue|redelivery|rss [--runs 5 --messages 20000 ...]
#   bench/run.sh scaling             1, 2, 3 worker processes on one queue [--workers 1,2,3 --gateway-latency 0,300 --runs 3]
#   bench/run.sh move                error-queue move vs RabbitMQ shovel (bench/ErrorQueueMove; MOVE_ARGS)
#   bench/run.sh move-memory         the walker's memory over error queues of 10,000 and 100,000 messages
#   bench/run.sh faults              kill -9 ×3, competing workers + redelivery, RabbitMQ cut 12 s behind a relay (CONVEYOR_FAULTS_JOBS, default 10000)
#   bench/run.sh faults-disruptive   RabbitMQ restart and PostgreSQL 20 s stop, on private servers
#                                    (bench/private-servers.sh; CONVEYOR_FAULTS_SHARED_SERVERS=1 stops the shared ones)
#   bench/run.sh report              rewrite docs/benchmarks.md from artifacts/bench/
# Options after the command go to the benchmark program (see bench/Conveyor.Bench/BenchOptions.cs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
what="${1:-all}"
[ $# -gt 0 ] && shift

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
env_lines=$(scripts/services.sh up) || { echo "[bench] could not start RabbitMQ and PostgreSQL (scripts/services.sh up)" >&2; exit 1; }
eval "$env_lines"
echo "[bench] building Release" >&2
dotnet build Worker.sln -c Release -v quiet -nologo >&2
mkdir -p artifacts/bench

bench() { dotnet bench/Conveyor.Bench/bin/Release/net10.0/Conveyor.Bench.dll "$@"; }

move() {
  # bench/ErrorQueueMove belongs to the error-queue work; its table goes into docs/benchmarks.md as printed.
  # shellcheck disable=SC2086
  dotnet bench/ErrorQueueMove/bin/Release/net10.0/Conveyor.Bench.ErrorQueueMove.dll ${MOVE_ARGS:---messages 20000 --runs 3} \
    | tee artifacts/bench/error-queue-move.md
}

move_memory() {
  dotnet bench/ErrorQueueMove/bin/Release/net10.0/Conveyor.Bench.ErrorQueueMove.dll --mode memory --messages "${MEMORY_MESSAGES:-100000}" \
    | tee artifacts/bench/error-queue-memory.md
}

faults() {
  local filter=$1
  CONVEYOR_FAULTS_JOBS="${CONVEYOR_FAULTS_JOBS:-10000}" CONVEYOR_FAULTS_REPORT="$root/artifacts/bench/faults.jsonl" \
    dotnet test tests/Conveyor.Tests -c Release --no-build --filter "$filter" \
      --logger "console;verbosity=normal" --results-directory artifacts/bench/test-results
}

faults_disruptive() {
  export CONVEYOR_FAULTS_DISRUPTIVE=1
  if [ "${CONVEYOR_FAULTS_SHARED_SERVERS:-0}" = 1 ]; then
    faults "Category=FaultsDisruptive"
    return
  fi
  # Private servers: stopping them disturbs nothing else running on this machine.
  # Called as `faults_disruptive || status=$?`, where set -e does not apply: each failure returns.
  bench/private-servers.sh up >&2 || { echo "[bench] could not start the private servers" >&2; return 1; }
  trap 'bench/private-servers.sh down >&2' RETURN
  local private_env
  private_env=$(bench/private-servers.sh env) || return 1
  eval "$private_env"
  CONVEYOR_FAULTS_JOBS="${CONVEYOR_FAULTS_JOBS:-3000}" faults "Category=FaultsDisruptive"
}

status=0
case "$what" in
  all)
    bench all "$@" || status=$?
    move || status=$?
    move_memory || status=$?
    faults "Category=Faults" || status=$?
    bench report ;;
  move)
    move || status=$?
    bench report ;;
  move-memory)
    move_memory || status=$?
    bench report ;;
  consume|enqueue|redelivery|rss|scaling|*,*)
    bench "$what" "$@" || status=$? ;;
  faults)
    faults "Category=Faults" || status=$?
    bench report ;;
  faults-disruptive)
    faults_disruptive || status=$?
    bench report ;;
  report)
    bench report ;;
  *)
    sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
exit "$status"
