#!/usr/bin/env bash
# Quick start: brings up RabbitMQ and PostgreSQL (scripts/services.sh), applies the database
# migrations, then runs the worker and the API until Ctrl+C.
#   API:     http://127.0.0.1:8080  (OpenAPI at /openapi/v1.json)
#   Worker:  http://127.0.0.1:8081  (/health/live, /health/ready)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dotnet >/dev/null || { echo "the .NET 10 SDK is not on PATH (dotnet): install it first, see global.json for the version" >&2; exit 1; }

# Not `eval "$(...)"`: set -e does not see a failure inside it, and the run would go on without servers.
env_lines=$(scripts/services.sh up) || { echo "could not start RabbitMQ and PostgreSQL (scripts/services.sh up)" >&2; exit 1; }
eval "$env_lines"
dotnet build Worker.sln -c Release -v quiet -nologo
dotnet run --project src/Worker -c Release --no-build -- migrate

# Every endpoint but health and metrics needs an API key: make a development admin key unless
# the environment already configures keys.
# The operator's own key is not printed: the example names the variable that holds it.
key_note='$Auth__ApiKeys__0__Key'
if [ -z "${Auth__ApiKeys__0__Key:-}" ]; then
  export Auth__ApiKeys__0__Name=dev-admin
  export Auth__ApiKeys__0__Key="dev-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export Auth__ApiKeys__0__Scopes=admin
  key_note="$Auth__ApiKeys__0__Key"
  echo "API key (development admin, made for this run): $key_note"
fi

# Webhooks are signed with a secret only the deployment knows (none ships with the worker, which
# refuses to start without one): make one for this run unless the environment gives it.
if [ -z "${Webhooks__SigningSecret:-}" ]; then
  export Webhooks__SigningSecret="dev-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  echo "Webhook signing secret (development, made for this run): $Webhooks__SigningSecret"
fi

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

dotnet run --project src/Worker -c Release --no-build & pids+=($!)
dotnet run --project src/Api -c Release --no-build & pids+=($!)

echo "Conveyor is starting: API http://127.0.0.1:8080, dashboard http://127.0.0.1:8080/dashboard, worker health http://127.0.0.1:8081/health/ready"
echo "Try: curl -i -X POST http://127.0.0.1:8080/api/jobs/charge-payment -H \"X-Api-Key: $key_note\" -H 'Content-Type: application/json' \\"
echo "       -d '{\"paymentId\":\"$(cat /proc/sys/kernel/random/uuid)\",\"accountId\":\"acct-1\",\"amountMinor\":1250,\"currency\":\"EUR\"}'"
wait -n "${pids[@]}"
