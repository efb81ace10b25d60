#!/usr/bin/env bash
# Group commit against the naive ceiling, in one run on one fresh database:
#   1. pgbench, one transaction per delivery (tools/naive-delivery.sql), C clients for T seconds;
#   2. the service under the load tool (benches/ingest.rs), C connections for T seconds;
# then the ratio of deliveries per second. Needs pgbench and psql (Debian: postgresql-client).
#
#     tools/compare-naive.sh [connections=64] [seconds=20]
set -euo pipefail
cd "$(dirname "$0")/.."
connections="${1:-64}"
seconds="${2:-20}"
server="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}"
db="inbox_compare_$$"
url="$server/$db"

psql -q "$server/postgres" -c "CREATE DATABASE $db"
trap 'psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
cargo build --release --quiet
DATABASE_URL="$url" target/release/prediction-inbox migrate >/dev/null
cargo bench --bench ingest --no-run --quiet 2>/dev/null

echo "== naive: pgbench, one transaction per delivery, $connections clients, $seconds s"
naive="$(pgbench -n -c "$connections" -j 2 -T "$seconds" -f tools/naive-delivery.sql "$url" 2>&1)"
echo "$naive" | grep -E "latency average|tps|failed"
naive_tps="$(echo "$naive" | sed -nE 's/^tps = ([0-9.]+).*/\1/p')"

echo "== group commit: the service under the load tool, $connections connections, $seconds s"
loaded="$(INBOX_BENCH_DATABASE_URL="$url" cargo bench --bench ingest --quiet -- postgres "$connections" "$seconds" 2>/dev/null)"
echo "$loaded"
service_rate="$(echo "$loaded" | sed -nE 's/.*: ([0-9]+) deliveries\/s.*/\1/p')"

python3 -c "print(f'ratio: {float($service_rate) / float($naive_tps):.2f}x the naive ceiling ($service_rate vs {float($naive_tps):.0f} deliveries/s)')"
