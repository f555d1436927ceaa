#!/usr/bin/env bash
# Benchmark: no-op jobs from a committed `enqueue` to done, with one worker
# process (release build). Enqueues COUNT jobs, BATCH per transaction, as
# fast as one client can, and reports throughput (first commit to last job
# done) and the enqueue-to-start latency p50/p99 (from each commit to the
# job's start, as recorded by the broker), plus the worker's peak RSS.
#
#   scripts/bench-jobs.sh [count] [batch]   (defaults 20000 and 100)
#
# Runs twice: a burst (all jobs at once: throughput; latency then is mostly
# time spent queued behind the burst), and paced at RATE jobs/s (default
# 5000, in transactions of 25: latency at that offered load).
#
# Needs the local Postgres (trust auth) and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT="${1:-20000}"
BATCH="${2:-100}"
DB="tenantry_bench_jobs"
ADMIN_URL="postgres://postgres@127.0.0.1:5432"
BIN="${CARGO_TARGET_DIR:-target}/release/tenantry"

cargo build --release --quiet
psql "$ADMIN_URL/postgres" -qc "drop database if exists $DB with (force)" >/dev/null
psql "$ADMIN_URL/postgres" -qc "create database $DB" >/dev/null

export DATABASE_URL="postgres://tenantry_api:tenantry_api@127.0.0.1:5432/$DB?sslmode=disable"
export MIGRATION_DATABASE_URL="$ADMIN_URL/$DB?sslmode=disable"
export JWT_SECRET="bench-secret-bench-secret-bench-secret-0123456789"
export JOBS_PREFIX="bench-$$" RUST_LOG="${RUST_LOG:-warn}" LOG_FORMAT=json
export REPORTS_STORE="${TMPDIR:-/tmp}/tenantry-bench-reports"
"$BIN" migrate up >/dev/null

"$BIN" worker > /tmp/tenantry-bench-worker.log 2>&1 &
WORKER=$!
trap 'kill $WORKER 2>/dev/null || true' EXIT
sleep 1

echo "== burst: $COUNT jobs enqueued as fast as possible (throughput)"
"$BIN" admin jobs bench --count "$COUNT" --batch "$BATCH"
echo "== paced: $COUNT jobs offered at ${RATE:=5000} jobs/s (latency at that load)"
"$BIN" admin jobs bench --count "$COUNT" --batch 25 --rate "$RATE"
echo "worker peak RSS: $(grep VmHWM /proc/$WORKER/status | awk '{print $2/1024 " MB"}')"
