#!/usr/bin/env bash
# Contract test: the OpenAPI document describes what the server answers.
#
# Runs schemathesis (pinned in scripts/contract-requirements.txt, installed
# into a venv on first use) against `tenantry dev` on a database of its own,
# over every operation of /openapi.json: as the owner of a real org, as an
# outsider (a signed-in user in no org), then the operator routes once more
# with a service_role key. Checks: no 5xx, every status and content type
# documented, every body matching its schema, every request that violates
# the document refused with a 4xx; and no error in the server's log. Exits
# non-zero on any failure or error.
#
#   scripts/contract-test.sh
#
# Environment: CONTRACT_PORT (18095), CONTRACT_EXAMPLES (25: fuzzed cases per
# operation), CONTRACT_SEED (1; the runs are reproducible), CONTRACT_VENV
# (default: contract-venv in the target directory), TENANTRY_BIN (default:
# the debug build). Needs the local Postgres (trust auth), Redis, python3
# with venv, and PyPI for the first install.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${CONTRACT_PORT:-18095}"
EXAMPLES="${CONTRACT_EXAMPLES:-25}"
SEED="${CONTRACT_SEED:-1}"
TARGET="${CARGO_TARGET_DIR:-target}"
BIN="${TENANTRY_BIN:-$TARGET/debug/tenantry}"
VENV="${CONTRACT_VENV:-$TARGET/contract-venv}"
REQUIREMENTS=scripts/contract-requirements.txt
DB="tenantry_contract_$PORT"
ADMIN_URL="postgres://postgres@127.0.0.1:5432"
URL="http://127.0.0.1:$PORT"
STARTED=$SECONDS

# The venv, (re)made when the requirements changed since it was made.
if ! cmp -s "$REQUIREMENTS" "$VENV/contract-requirements.txt" 2>/dev/null; then
  echo "installing $(grep -m1 '^schemathesis==' "$REQUIREMENTS") into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$VENV/contract-requirements.txt"
fi
# Absolute: schemathesis runs from the work directory.
VENV=$(realpath "$VENV")

# The debug binary as `cargo test` builds it (dev-dependencies' features
# unified): a no-op right after `cargo test`, where `cargo build` would
# rebuild the dependencies without those features.
if [ -z "${TENANTRY_BIN:-}" ]; then
  cargo test --no-run --quiet
fi

WORK=$(mktemp -d)
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
  psql "$ADMIN_URL/postgres" -qc "drop database if exists $DB with (force)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

psql "$ADMIN_URL/postgres" -qc "drop database if exists $DB with (force)" >/dev/null 2>&1
export DATABASE_URL="postgres://tenantry_api:tenantry_api@127.0.0.1:5432/$DB?sslmode=disable"
export MIGRATION_DATABASE_URL="$ADMIN_URL/$DB?sslmode=disable"
export PORT RUST_LOG="${RUST_LOG:-warn}" LOG_FORMAT=json
export JWT_SECRET="contract-test-secret-contract-test-secret-0123"
export AUTH_ISSUER="$URL/auth/v1" REPORTS_STORE="$WORK/reports"
# Redis keys of this run apart from any other server's.
export CACHE_PREFIX="contract$PORT" JOBS_PREFIX="contract$PORT"
# Every request comes from 127.0.0.1: lift the per-IP limit of sign-up,
# sign-in, verify and recover. The per-address and per-user limits stay in
# force; their 429s are documented.
export AUTH_IP_LIMIT_PER_MIN=1000000
"$BIN" dev > "$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do
  curl -sf "$URL/readyz" >/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$WORK/server.log"; echo "the server did not start"; exit 1; }
  sleep 0.1
done
curl -sf "$URL/readyz" >/dev/null || { cat "$WORK/server.log"; echo "the server is not ready"; exit 1; }

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
# A confirmed account (dev autoconfirms): its session's access token.
signup() {
  curl -sf -X POST "$URL/auth/v1/signup" -H 'content-type: application/json' \
    -d "{\"email\":\"$1@contract.example\",\"password\":\"contract test password\"}" | json '["access_token"]'
}
new_org() {
  curl -sf -X POST "$URL/api/v1/orgs" -H "Authorization: Bearer $1" \
    -H 'content-type: application/json' -d "{\"name\":\"$2\"}" | json '["id"]'
}
OWNER=$(signup owner)
ORG=$(new_org "$OWNER" "Contract Org")
OWNERS_SPARE_ORG=$(new_org "$OWNER" "Spare Org")
OUTSIDER=$(signup outsider)
OTHERS_ORG=$(new_org "$(signup other-owner)" "Not Theirs")
SERVICE=$("$BIN" admin keys service)

CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection

# One run of schemathesis as `who` with `token` as the bearer; `spare_org`
# is the org DELETE /api/v1/orgs/{org_id} gets; extra arguments select
# operations (default: all).
run() {
  local who=$1 token=$2 spare_org=$3 config="$WORK/$1.toml" signs_out
  shift 3
  signs_out=$(signup "$who-signs-out")
  cat > "$config" <<TOML
# Path parameters named org_id are the owner's org: the operations run
# against real data (for the outsider, an org they are not in).
[parameters]
"path.org_id" = "$ORG"

# Deleting the org would leave the rest of the run nothing but 404s: this
# operation gets an org of its own.
[[operations]]
include-path = "/api/v1/orgs/{org_id}"
include-method = "DELETE"
parameters = { "path.org_id" = "$spare_org" }

# Signing out (scope=global above all) would end the session the rest of the
# run uses: this operation signs out a session of its own, of another user.
[[operations]]
include-path = "/auth/v1/logout"
headers = { Authorization = "Bearer $signs_out" }
TOML
  echo "== schemathesis as $who"
  # In the work directory: schemathesis and hypothesis keep their caches in
  # the current one. One worker: the server shares the machine's cores, and
  # hypothesis parses lambdas' source (ast.parse), which CPython 3.11 can
  # get wrong across threads (gh-106905: "AST constructor recursion depth
  # mismatch", seen here with 4 workers).
  (cd "$WORK" && "$VENV/bin/schemathesis" --config-file "$config" run "$URL/openapi.json" \
    -H "Authorization: Bearer $token" -c "$CHECKS" --phases examples,coverage,fuzzing \
    -n "$EXAMPLES" -w 1 --seed "$SEED" "$@")
}

STATUS=0
run owner "$OWNER" "$OWNERS_SPARE_ORG" || STATUS=1
run outsider "$OUTSIDER" "$OTHERS_ORG" || STATUS=1
# Operator routes answer users 403: once more as an operator, for the rest.
run operator "$SERVICE" "$OTHERS_ORG" \
  --include-path-regex '^/api/v1/admin/|^/api/v1/orgs/[{]org_id[}]/credits/grants$|^/auth/v1/admin/' || STATUS=1
if grep -q '"level":"ERROR"' "$WORK/server.log"; then
  echo "== errors in the server's log"
  grep '"level":"ERROR"' "$WORK/server.log" | head -20
  STATUS=1
fi
echo "contract test: $([ $STATUS = 0 ] && echo passed || echo FAILED) in $((SECONDS - STARTED)) s"
exit $STATUS
