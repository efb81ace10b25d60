#!/usr/bin/env bash
# Group commit against the naive ceiling, on one fresh database, in alternating rounds:
#   1. pgbench, one transaction per delivery (tools/naive-delivery.sql), C clients for T seconds;
#   2. the service under the load tool (benches/ingest.rs), C connections for T seconds;
# each round's ratio of deliveries per second, then the medians. Rounds alternate so that a
# machine whose speed drifts (a shared VM does) weighs on both sides alike. Needs pgbench and psql
# (Debian: postgresql-client).
#
#     tools/compare-naive.sh [connections=64] [seconds=15] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/.."
connections="${1:-64}"
seconds="${2:-15}"
rounds="${3:-3}"
server="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}"
db="inbox_compare_$$"
url="$server/$db"

psql -q "$server/postgres" -c "CREATE DATABASE $db"
trap 'psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
cargo build --release --quiet
DATABASE_URL="$url" target/release/prediction-inbox migrate >/dev/null
cargo bench --bench ingest --no-run --quiet 2>/dev/null

naive_rates=()
service_rates=()
for round in $(seq "$rounds"); do
    echo "== round $round/$rounds: naive, pgbench, one transaction per delivery, $connections clients, $seconds s"
    naive="$(pgbench -n -c "$connections" -j 2 -T "$seconds" -f tools/naive-delivery.sql "$url" 2>&1)"
    echo "$naive" | grep -E "latency average|tps|failed"
    naive_rates+=("$(echo "$naive" | sed -nE 's/^tps = ([0-9.]+).*/\1/p')")

    echo "== round $round/$rounds: group commit, the service under the load tool, $connections connections, $seconds s"
    loaded="$(INBOX_BENCH_DATABASE_URL="$url" cargo bench --bench ingest --quiet -- postgres "$connections" "$seconds" 2>/dev/null)"
    echo "$loaded"
    service_rates+=("$(echo "$loaded" | sed -nE 's/.*: ([0-9]+) deliveries\/s.*/\1/p')")
done

python3 - "${naive_rates[*]}" "${service_rates[*]}" <<'PY'
import statistics, sys
naive = [float(x) for x in sys.argv[1].split()]
service = [float(x) for x in sys.argv[2].split()]
for i, (n, s) in enumerate(zip(naive, service), 1):
    print(f"round {i}: {s:.0f} vs {n:.0f} deliveries/s = {s / n:.2f}x")
n, s = statistics.median(naive), statistics.median(service)
print(f"ratio of medians: {s / n:.2f}x the naive ceiling ({s:.0f} vs {n:.0f} deliveries/s)")
PY
