#!/usr/bin/env bash
# Runs the whole test suite against real RabbitMQ and PostgreSQL (started by scripts/services.sh
# unless ConnectionStrings__Conveyor and RabbitMq__Host already name servers), then prints
# "N passed, N failed, N skipped" from the test results.
set -uo pipefail
cd "$(dirname "$0")/.."
command -v dotnet >/dev/null || { echo "the .NET 10 SDK is not on PATH (dotnet): install it first, see global.json for the version" >&2; exit 1; }

# A run that cannot start still ends with the summary line CI reads (no test ran: one failure).
no_run() { echo "0 passed, 1 failed, 0 skipped"; exit 1; }

# The dashboard's browser tests drive Debian's chromium through Playwright, which never downloads a browser.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ ! -x /usr/bin/chromium ]; then
  as_root=""; [ "$(id -u)" -eq 0 ] || as_root="sudo"
  { $as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    || { echo "could not install chromium (needed by the dashboard's browser tests)" >&2; no_run; }
fi

# The deploy tests render deploy/k8s with `kubectl kustomize` (Components need kubectl 1.21+). The machine
# image's apt sources carry it; without it those tests fail and say so, the others still run.
if ! command -v kubectl >/dev/null; then
  as_root=""; [ "$(id -u)" -eq 0 ] || as_root="sudo"
  { $as_root apt-get update -qq && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl; } \
    || echo "could not install kubectl: the deploy tests will fail" >&2
fi

if [ -z "${ConnectionStrings__Conveyor:-}" ] || [ -z "${RabbitMq__Host:-}" ]; then
  env_lines=$(scripts/services.sh up) || { echo "could not start the services" >&2; no_run; }
  eval "$env_lines"
fi

results=artifacts/test-results
rm -rf "$results"
# A test that hangs is stopped after 10 minutes (the longest takes under a minute), so the run still ends and
# says which test it was, instead of running into CI's limit without a summary.
dotnet test Worker.sln --logger "trx;LogFilePrefix=results" --logger "console;verbosity=normal" \
  --blame-hang-timeout 10m --blame-hang-dump-type none --results-directory "$results" "$@"
status=$?

passed=0; failed=0; skipped=0
for trx in "$results"/*.trx; do
  [ -f "$trx" ] || continue
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -n1)
  get() { printf '%s' "$counters" | grep -o " $1=\"[0-9]*\"" | grep -o '[0-9]*'; }
  p=$(get passed); f=$(get failed); t=$(get total); e=$(get executed)
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  skipped=$((skipped + ${t:-0} - ${e:-0}))
done
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi  # the run itself broke
# The failures again, last, so that a log cut to its tail still says what failed and why.
for trx in "$results"/*.trx; do
  [ -f "$trx" ] && awk -f scripts/trx-failures.awk "$trx"
done
echo "$passed passed, $failed failed, $skipped skipped"
exit "$status"
