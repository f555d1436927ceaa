#!/usr/bin/env bash
# Benchmark of the auth server (release build, `tenantry serve`):
#  1. password sign-ins (argon2id m=19456 KiB, t=2, p=1) at full load: logins/s;
#  2. GET /api/v1/me at 16 connections alone, then while sign-ins run at full
#     load: its p99 shows whether hashing starves other requests (hashing runs
#     on a bounded blocking pool);
#  3. refresh-token grants, each thread chaining its own session: refreshes/s.
#
#   scripts/bench-auth.sh [duration-seconds]   (default 20)
#
# Needs the local Postgres (trust auth), Redis and wrk (installed with apt if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:-20}"
PORT="${BENCH_PORT:-18082}"
DB="tenantry_bench_auth"
ADMIN_URL="postgres://postgres@127.0.0.1:5432"
BIN="${CARGO_TARGET_DIR:-target}/release/tenantry"
URL="http://127.0.0.1:$PORT"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet
psql "$ADMIN_URL/postgres" -qc "drop database if exists $DB with (force)" 2>/dev/null
psql "$ADMIN_URL/postgres" -qc "create database $DB"

export DATABASE_URL="postgres://tenantry_api:tenantry_api@127.0.0.1:5432/$DB?sslmode=disable"
export MIGRATION_DATABASE_URL="$ADMIN_URL/$DB?sslmode=disable"
export JWT_SECRET="bench-secret-bench-secret-bench-secret-0123456789"
export AUTH_KEYS_SECRET="YmVuY2gtb25seS1hdXRoLWtleXMtc2VjcmV0LTMyYnk="
export AUTH_AUTOCONFIRM=true AUTH_ISSUER="$URL/auth/v1" PORT RUST_LOG="${RUST_LOG:-warn}" LOG_FORMAT=json
# Every request comes from 127.0.0.1: lift the per-IP limit (the per-address
# limit stays; the load cycles through BENCH_USERS addresses).
export AUTH_IP_LIMIT_PER_MIN=1000000 BENCH_USERS="${BENCH_USERS:-400}"
"$BIN" migrate up >/dev/null
"$BIN" serve > /tmp/tenantry-bench-auth.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.1; done

export BENCH_PASSWORD="correct horse battery staple"
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
echo "signing up $BENCH_USERS users"
for i in $(seq 1 "$BENCH_USERS"); do
  curl -sf -o /dev/null -X POST "$URL/auth/v1/signup" -H 'content-type: application/json' \
    -d "{\"email\":\"bench-$i@example.com\",\"password\":\"$BENCH_PASSWORD\"}"
done
ACCESS=$(curl -sf -X POST "$URL/auth/v1/token?grant_type=password" -H 'content-type: application/json' \
  -d "{\"email\":\"bench-1@example.com\",\"password\":\"$BENCH_PASSWORD\"}" | json '["access_token"]')

echo "== GET /api/v1/me alone (16 connections)"
wrk -t2 -c16 -d"${DURATION}s" --latency -H "Authorization: Bearer $ACCESS" "$URL/api/v1/me" | grep -E "Requests/sec|50%|99%"

echo "== password sign-ins at full load (8 connections) with GET /api/v1/me alongside"
wrk -t1 -c8 -d"${DURATION}s" -s scripts/wrk/login.lua "$URL" > /tmp/bench-login.txt &
LOGIN=$!
sleep 1
wrk -t1 -c16 -d"$((DURATION - 2))s" --latency -H "Authorization: Bearer $ACCESS" "$URL/api/v1/me" | grep -E "Requests/sec|50%|99%" | sed 's/^/  me: /'
wait $LOGIN
grep -E "Requests/sec|Latency|non-2xx" /tmp/bench-login.txt | sed 's/^/  login: /'

echo "== refresh-token grants (4 sessions, each chaining its rotations)"
TOKENS=""
for k in 1 2 3 4; do
  T=$(curl -sf -X POST "$URL/auth/v1/token?grant_type=password" -H 'content-type: application/json' \
    -d "{\"email\":\"bench-$k@example.com\",\"password\":\"$BENCH_PASSWORD\"}" | json '["refresh_token"]')
  TOKENS="$TOKENS${TOKENS:+,}$T"
done
REFRESH_TOKENS="$TOKENS" wrk -t4 -c4 -d"${DURATION}s" --latency -s scripts/wrk/refresh.lua "$URL" | grep -E "Requests/sec|50%|99%|Non-2xx"
echo "server peak RSS: $(grep VmHWM /proc/$SERVER/status | awk '{print $2/1024 " MB"}')"
