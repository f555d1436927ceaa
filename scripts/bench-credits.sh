#!/usr/bin/env bash
# Benchmark: POST /api/v1/orgs/{org_id}/credits/spend {amount: 1}, each with
# its own Idempotency-Key, at 64 connections (wrk) against a release build:
# first all against one org, then spread over 64 orgs. After each run the
# balances must equal the grants minus the spends wrk saw succeed, and
# `tenantry admin credits reconcile` must find the ledger consistent.
#
#   scripts/bench-credits.sh [duration-seconds]   (default 20)
#
# Needs the local Postgres (trust auth) and wrk (installed with apt if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:-20}"
PORT="${BENCH_PORT:-18080}"
DB="tenantry_bench"
SECRET="bench-secret-bench-secret-bench-secret-0123456789"
ADMIN_URL="postgres://postgres@127.0.0.1:5432"
GRANT=1000000000
BIN="${CARGO_TARGET_DIR:-target}/release/tenantry"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet

psql "$ADMIN_URL/postgres" -qc "drop database if exists $DB with (force)" >/dev/null

export DATABASE_URL="postgres://tenantry_api:tenantry_api@127.0.0.1:5432/$DB?sslmode=disable"
export MIGRATION_DATABASE_URL="$ADMIN_URL/$DB?sslmode=disable"
export JWT_SECRET="$SECRET" PORT="$PORT" RUST_LOG="${RUST_LOG:-warn}" LOG_FORMAT=json
export DEV_WORKER=false DB_MAX_CONNECTIONS="${DB_MAX_CONNECTIONS:-16}"
"$BIN" dev > /tmp/tenantry-bench.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done

token() { python3 scripts/token.py "$1" "$2" "$SECRET"; }

OWNER_ID=$(python3 -c 'import uuid; print(uuid.uuid4())')
TOKEN=$(token "$OWNER_ID" owner@bench.example)
SERVICE=$("$BIN" admin keys service 2>/dev/null)
API="http://127.0.0.1:$PORT/api/v1"

new_org() {
  local org
  org=$(curl -sf -X POST "$API/orgs" -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d "{\"name\":\"Bench $1\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -sf -X POST "$API/orgs/$org/credits/grants" -H "Authorization: Bearer $SERVICE" \
    -H "Idempotency-Key: grant-$org" -H 'content-type: application/json' \
    -d "{\"amount\":$GRANT,\"source\":\"promotion\"}" >/dev/null
  echo "$org"
}

balance() {
  curl -sf "$API/orgs/$1/credits" -H "Authorization: Bearer $TOKEN" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["balance"])'
}

# run <label> <orgs...>: spends for DURATION seconds, then checks the balances.
run() {
  local label=$1; shift
  local orgs; orgs=$(IFS=,; echo "$*")
  local before=0 after=0 b
  for o in "$@"; do b=$(balance "$o"); before=$((before + b)); done
  echo "== $label: $# org(s), 64 connections, ${DURATION}s"
  BENCH_TOKEN="$TOKEN" BENCH_ORGS="$orgs" BENCH_RUN="$label" BENCH_OUT=/tmp/bench-credits-ok \
    wrk -t2 -c64 -d"${DURATION}s" --latency -s scripts/wrk/spend.lua "$API/" | grep -v "^  Thread\|^    \(Latency\|Req/Sec\)"
  for o in "$@"; do b=$(balance "$o"); after=$((after + b)); done
  local ok; ok=$(cat /tmp/bench-credits-ok)
  [ "$ok" -gt 0 ] || { echo "NO SPEND SUCCEEDED"; exit 1; }
  # Spends recorded (each success records its key); wrk may stop while up to
  # 64 are in flight, whose answers it never reads.
  local recorded; recorded=$(psql "$ADMIN_URL/$DB" -Atc \
    "select count(*) from idempotency_keys where scope = 'spend' and key like '$label-%'")
  echo "balance before $before, after $after; spends answered 200: $ok, recorded: $recorded"
  [ $((before - after)) = "$recorded" ] || { echo "BALANCE MISMATCH"; exit 1; }
  [ "$recorded" -ge "$ok" ] && [ "$recorded" -le $((ok + 64)) ] || { echo "ANSWER MISMATCH"; exit 1; }
}

ORG=$(new_org single)
# Warm up (connections, caches), then measure.
BENCH_TOKEN="$TOKEN" BENCH_ORGS="$ORG" BENCH_RUN=warm BENCH_OUT=/dev/null wrk -t2 -c64 -d3s -s scripts/wrk/spend.lua "$API/" >/dev/null
run "one-org" "$ORG"

ORGS=()
for i in $(seq 1 64); do ORGS+=("$(new_org "$i")"); done
run "64-orgs" "${ORGS[@]}"

"$BIN" admin credits reconcile
echo "server peak RSS: $(grep VmHWM /proc/$SERVER/status | awk '{print $2, $3}')"
