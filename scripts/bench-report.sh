#!/usr/bin/env bash
# Benchmark: a members report (CSV) of an org with MEMBERS members, built by
# one `tenantry worker` process (release build) while `tenantry serve` takes
# the request. Prints the build time, the file size and the worker's peak RSS,
# which stays flat as MEMBERS grows: rows are streamed from Postgres into a
# multipart upload, never held.
#
#   scripts/bench-report.sh [members]   (default 1000000)
#
# Needs the local Postgres (trust auth) and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

MEMBERS="${1:-1000000}"
PORT="${BENCH_PORT:-18081}"
DB="tenantry_bench_reports"
SECRET="bench-secret-bench-secret-bench-secret-0123456789"
ADMIN_URL="postgres://postgres@127.0.0.1:5432"
BIN="${CARGO_TARGET_DIR:-target}/release/tenantry"
STORE="$(mktemp -d)"

cargo build --release --quiet
psql "$ADMIN_URL/postgres" -qc "drop database if exists $DB with (force)" 2>/dev/null
psql "$ADMIN_URL/postgres" -qc "create database $DB"

export DATABASE_URL="postgres://tenantry_api:tenantry_api@127.0.0.1:5432/$DB?sslmode=disable"
export MIGRATION_DATABASE_URL="$ADMIN_URL/$DB?sslmode=disable"
export JWT_SECRET="$SECRET" PORT="$PORT" RUST_LOG="${RUST_LOG:-warn}" LOG_FORMAT=json
export JOBS_PREFIX="bench-report-$$" REPORTS_STORE="$STORE"
"$BIN" migrate up >/dev/null
"$BIN" serve > /tmp/tenantry-bench-serve.log 2>&1 &
SERVER=$!
"$BIN" worker > /tmp/tenantry-bench-worker.log 2>&1 &
WORKER=$!
trap 'kill $SERVER $WORKER 2>/dev/null || true; rm -rf "$STORE"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done

TOKEN=$(python3 scripts/token.py "$(python3 -c 'import uuid; print(uuid.uuid4())')" owner@bench.example "$SECRET")
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
ORG=$(curl -sf -X POST "http://127.0.0.1:$PORT/api/v1/orgs" -H "Authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"name":"Report Bench"}' | json '["id"]')

psql "$ADMIN_URL/$DB" -q <<SQL
insert into users (id, email, display_name)
  select gen_random_uuid(), 'member' || i || '@bench.example', 'Member ' || i
  from generate_series(1, $MEMBERS - 1) i;
insert into memberships (org_id, user_id, role)
  select '$ORG', id, 'member' from users where email like 'member%@bench.example';
analyze;
SQL
echo "org $ORG: $MEMBERS members; worker RSS before: $(grep VmRSS /proc/$WORKER/status | awk '{print $2/1024 " MB"}')"

START=$(date +%s.%N)
REPORT=$(curl -sf -X POST "http://127.0.0.1:$PORT/api/v1/orgs/$ORG/reports" -H "Authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"kind":"members","format":"csv"}' | json '["id"]')
while true; do
  STATE=$(curl -sf "http://127.0.0.1:$PORT/api/v1/orgs/$ORG/reports/$REPORT" -H "Authorization: Bearer $TOKEN" | json '["state"]')
  case "$STATE" in
    succeeded) break ;;
    failed|dead) echo "report $STATE"; exit 1 ;;
  esac
  sleep 0.2
done
END=$(date +%s.%N)
LINES=$(curl -sf "http://127.0.0.1:$PORT/api/v1/orgs/$ORG/reports/$REPORT/download" -H "Authorization: Bearer $TOKEN" | wc -l)
echo "report built in $(python3 -c "print(round($END - $START, 2))") s; CSV lines: $LINES (header + $MEMBERS rows)"
echo "file: $(du -h "$STORE"/reports/"$ORG"/"$REPORT".csv | cut -f1)"
echo "worker peak RSS: $(grep VmHWM /proc/$WORKER/status | awk '{print $2/1024 " MB"}')"
