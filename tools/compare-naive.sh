#!/usr/bin/env bash
# Group commit against the naive ceiling, on one fresh database, in alternating rounds:
#   1. pgbench, one transaction per delivery (tools/naive-delivery.sql), C clients for T seconds:
#      the naive ceiling;
#   2. the same with the NOTIFY the service also sends, which Postgres serialises: for comparison;
#   3. the service under the load tool (benches/ingest.rs), C connections for T seconds;
# each round's ratios of deliveries per second, then the ratios of the medians. Rounds alternate
# so that a machine whose speed drifts (a shared VM does) weighs on every side alike. Needs pgbench
# and psql (Debian: postgresql-client).
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
notify_rates=()
service_rates=()
naive() {
    pgbench -n -c "$connections" -j 2 -T "$seconds" -D notify="$1" -f tools/naive-delivery.sql "$url" 2>&1
}
for round in $(seq "$rounds"); do
    echo "== round $round/$rounds: naive, pgbench, one transaction per delivery, $connections clients, $seconds s"
    out="$(naive 0)"
    echo "$out" | grep -E "latency average|tps|failed"
    naive_rates+=("$(echo "$out" | sed -nE 's/^tps = ([0-9.]+).*/\1/p')")

    echo "== round $round/$rounds: naive with NOTIFY, for comparison"
    out="$(naive 1)"
    echo "$out" | grep -E "latency average|tps|failed"
    notify_rates+=("$(echo "$out" | sed -nE 's/^tps = ([0-9.]+).*/\1/p')")

    echo "== round $round/$rounds: group commit, the service under the load tool, $connections connections, $seconds s"
    loaded="$(INBOX_BENCH_DATABASE_URL="$url" cargo bench --bench ingest --quiet -- postgres "$connections" "$seconds" 2>/dev/null)"
    echo "$loaded"
    service_rates+=("$(echo "$loaded" | sed -nE 's/.*: ([0-9]+) deliveries\/s.*/\1/p')")
done

python3 - "${naive_rates[*]}" "${notify_rates[*]}" "${service_rates[*]}" <<'PY'
import statistics, sys
naive, notify, service = ([float(x) for x in arg.split()] for arg in sys.argv[1:4])
for i, (n, m, s) in enumerate(zip(naive, notify, service), 1):
    print(f"round {i}: {s:.0f} vs naive {n:.0f} = {s / n:.2f}x (vs naive with NOTIFY {m:.0f} = {s / m:.2f}x)")
n, m, s = statistics.median(naive), statistics.median(notify), statistics.median(service)
print(f"ratio of medians: {s / n:.2f}x the naive ceiling ({s:.0f} vs {n:.0f} deliveries/s)")
print(f"  against the naive with NOTIFY: {s / m:.2f}x ({m:.0f} deliveries/s)")
PY
