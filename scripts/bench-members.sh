#!/usr/bin/env bash
# Benchmark: GET /api/v1/orgs/{org_id}/members for an org of 50 members, with
# authenticated requests at 64 connections (wrk), against a release build.
# Prints wrk's throughput and latency distribution and the server's peak RSS.
#
#   scripts/bench-members.sh [duration-seconds]   (default 30)
#
# BENCH_TOKEN=own signs the owner up through Tenantry's auth server and uses its
# access token (ES256, a Tenantry session: checked against the ended-session
# set); the default is an HS256 token shaped like Supabase's.
#
# Needs the local Postgres (trust auth) and wrk (installed with apt if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:-30}"
PORT="${BENCH_PORT:-18080}"
DB="tenantry_bench"
SECRET="bench-secret-bench-secret-bench-secret-0123456789"
ADMIN_URL="postgres://postgres@127.0.0.1:5432"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
[ -n "${TENANTRY_BIN:-}" ] || cargo build --release --quiet

psql "$ADMIN_URL/postgres" -qc "drop database if exists $DB with (force)" >/dev/null

export DATABASE_URL="postgres://tenantry_api:tenantry_api@127.0.0.1:5432/$DB?sslmode=disable"
export MIGRATION_DATABASE_URL="$ADMIN_URL/$DB?sslmode=disable"
export JWT_SECRET="$SECRET" PORT="$PORT" JWT_EXPIRY_SECS=3600 RUST_LOG="${RUST_LOG:-warn}" LOG_FORMAT=json
"${TENANTRY_BIN:-${CARGO_TARGET_DIR:-target}/release/tenantry}" dev > /tmp/tenantry-bench.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done

# An HS256 access token shaped like Supabase's, for a given user id and email.
token() { python3 scripts/token.py "$1" "$2" "$SECRET"; }

if [ "${BENCH_TOKEN:-}" = own ]; then
  TOKEN=$(curl -sf -X POST "http://127.0.0.1:$PORT/auth/v1/signup" -H 'content-type: application/json' \
    -d '{"email":"owner@bench.example","password":"bench password 123"}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
else
  OWNER_ID=$(python3 -c 'import uuid; print(uuid.uuid4())')
  TOKEN=$(token "$OWNER_ID" owner@bench.example)
fi
ORG=$(curl -sf -X POST "http://127.0.0.1:$PORT/api/v1/orgs" -H "Authorization: Bearer $TOKEN" \
  -H 'content-type: application/json' -d '{"name":"Bench Org"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

# 49 more members, seeded directly (the API path for members is invitations).
psql "$ADMIN_URL/$DB" -q <<SQL
insert into users (id, email, display_name)
  select gen_random_uuid(), 'member' || i || '@bench.example', 'Member ' || i from generate_series(1, 49) i;
insert into memberships (org_id, user_id, role)
  select '$ORG', id, case when random() < 0.2 then 'viewer' else 'member' end
  from users where email like 'member%@bench.example';
analyze;
SQL

COUNT=$(curl -sf "http://127.0.0.1:$PORT/api/v1/orgs/$ORG/members?limit=100" -H "Authorization: Bearer $TOKEN" \
  | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]))')
echo "org $ORG has $COUNT members"
[ "$COUNT" = 50 ] || { echo "expected 50 members"; exit 1; }

# Warm up, then measure.
wrk -t2 -c64 -d3s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/v1/orgs/$ORG/members?limit=50" >/dev/null
# The server's CPU time (user + system, in clock ticks) around the run.
cpu() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
CPU_BEFORE=$(cpu)
wrk -t2 -c64 -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" \
  "http://127.0.0.1:$PORT/api/v1/orgs/$ORG/members?limit=50" | tee /tmp/tenantry-bench-wrk.txt
CPU_AFTER=$(cpu)
REQUESTS=$(awk '/requests in/ {print $1}' /tmp/tenantry-bench-wrk.txt)
TICKS=$(getconf CLK_TCK)
echo "server CPU per request: $(python3 -c "print(round(($CPU_AFTER - $CPU_BEFORE) / $TICKS / $REQUESTS * 1e6, 1))") µs"
echo "server peak RSS: $(grep VmHWM /proc/$SERVER/status | awk '{print $2, $3}')"
echo "server RSS now:  $(grep VmRSS /proc/$SERVER/status | awk '{print $2, $3}')"
