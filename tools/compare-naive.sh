#!/usr/bin/env bash
# Group commit against the naive ceiling, in alternating rounds, each side on a fresh database of
# its own:
#   1. pgbench running the service's own batch statement, 32 deliveries a transaction
#      (tools/batch-delivery.sql), from one client and then from two, for T seconds each, each on a
#      fresh database of its own: what the database alone takes from one writer, and from two;
#   2. pgbench, one transaction per delivery (tools/naive-delivery.sql), C clients for T seconds:
#      the naive ceiling;
#   3. the same with the NOTIFY the service also sends, which Postgres serialises: for comparison;
#   4. the service under the load tool (benches/ingest.rs), C connections for T seconds;
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
# The naive runs and the service each write a database of their own, kept across the rounds so
# that each grows as its own writes make it grow. One database for both left the service's
# reconciler the predictions the naive script leaves unfinished (38,000 of 145,000 after two
# rounds), silent for longer than INBOX_RECONCILE_AFTER: real work (4,165 of them reconciled
# within one round), not the idle workers the figure is meant to include.
db="inbox_compare_$$"
url="$server/$db"
service_db="inbox_compare_service_$$"
service_url="$server/$service_db"
# The statement alone writes several times what the others do: it gets a fresh database of its own
# each time, so that it weighs on neither of the others.
alone_db="inbox_compare_alone_$$"
alone_url="$server/$alone_db"
# Deliveries a transaction of the statement alone: about what the service's batches hold at 64
# connections.
batch=32

psql -q "$server/postgres" -c "CREATE DATABASE $db" -c "CREATE DATABASE $service_db"
trap 'PGOPTIONS="-c client_min_messages=warning" psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "DROP DATABASE IF EXISTS $service_db WITH (FORCE)" -c "DROP DATABASE IF EXISTS $alone_db WITH (FORCE)"' EXIT
cargo build --release --quiet
DATABASE_URL="$url" target/release/prediction-inbox migrate >/dev/null
DATABASE_URL="$service_url" target/release/prediction-inbox migrate >/dev/null
cargo bench --bench ingest --no-run --quiet 2>/dev/null

# The service's batch statement, as the service sends it, behind a function that pgbench can call.
record="$(cargo bench --bench ingest --quiet -- statement 2>/dev/null)"
[ -n "$record" ] || { echo "the batch statement could not be read from the ingest bench" >&2; exit 1; }
# The settings of the service's connection for writes, which pgbench's clients take on.
writer_settings="$(cargo bench --bench ingest --quiet -- statement-settings 2>/dev/null)"
[ -n "$writer_settings" ] || { echo "the writer's settings could not be read from the ingest bench" >&2; exit 1; }
fresh_alone_db() {
    PGOPTIONS="-c client_min_messages=warning" psql -q "$server/postgres" \
        -c "DROP DATABASE IF EXISTS $alone_db WITH (FORCE)" -c "CREATE DATABASE $alone_db"
    DATABASE_URL="$alone_url" target/release/prediction-inbox migrate >/dev/null
    psql -q -v ON_ERROR_STOP=1 "$alone_url" <<SQL
CREATE FUNCTION bench_record(text[], text[], int8[], timestamptz[], text[], bool[], bool[], text[],
                             text[], text[], timestamptz[], int2[], int8[], int8[], text, interval,
                             text[])
RETURNS SETOF text[] LANGUAGE plpgsql AS \$bench\$
BEGIN
    RETURN QUERY $record;
END
\$bench\$;
SQL
}

# Pays the vacuum debt one side's run left in its database before the other side's run: left to
# autovacuum, it fell due during the next run (seen, with a database for each side: the service's
# second round at 3,779 deliveries/s against 10,445 in its first, with 229 µs a delivery of the
# machine's CPU in processes that ended before the run did; with the debt paid first, 7,296
# against 9,588, and 51 µs). The checkpoint leaves the pages it wrote to the kernel, which
# writes them back at leisure, so `sync` waits for that too.
settle() {
    psql -q "$1" -c "VACUUM (ANALYZE)" -c "CHECKPOINT"
    sync
}
naive_rates=()
notify_rates=()
batch1_rates=()
batch2_rates=()
service_rates=()
naive() {
    pgbench -n -c "$connections" -j 2 -T "$seconds" -D notify="$1" -f tools/naive-delivery.sql "$url" 2>&1
}
tps() {
    sed -nE 's/^tps = ([0-9.]+).*/\1/p'
}
# Deliveries a second of the service's batch statement, $batch a transaction, from $1 clients.
batched() {
    local out
    fresh_alone_db
    out="$(PGOPTIONS="$writer_settings" pgbench -n -c "$1" -j "$1" -T "$seconds" -D k=-1 -D batch="$batch" -D run=1 \
        -f tools/batch-delivery.sql "$alone_url" 2>&1)" || { echo "$out" >&2; return 1; }
    echo "$out" | tps | awk -v batch="$batch" '{ printf "%.0f", $1 * batch }'
}
for round in $(seq "$rounds"); do
    # First, so that what it writes is flushed by a checkpoint before the others run, not during.
    echo "== round $round/$rounds: the service's batch statement alone, pgbench, $batch deliveries a transaction, $seconds s each"
    batch1_rates+=("$(batched 1)")
    batch2_rates+=("$(batched 2)")
    echo "one client: ${batch1_rates[-1]} deliveries/s; two clients: ${batch2_rates[-1]} deliveries/s"
    psql -q "$server/postgres" -c "DROP DATABASE $alone_db WITH (FORCE)" -c "CHECKPOINT"

    settle "$service_url"
    echo "== round $round/$rounds: naive, pgbench, one transaction per delivery, $connections clients, $seconds s"
    out="$(naive 0)"
    echo "$out" | grep -E "latency average|tps|failed"
    naive_rates+=("$(echo "$out" | tps)")

    echo "== round $round/$rounds: naive with NOTIFY, for comparison"
    out="$(naive 1)"
    echo "$out" | grep -E "latency average|tps|failed"
    notify_rates+=("$(echo "$out" | tps)")

    settle "$url"
    echo "== round $round/$rounds: group commit, the service under the load tool, $connections connections, $seconds s"
    loaded="$(INBOX_BENCH_DATABASE_URL="$service_url" cargo bench --bench ingest --quiet -- postgres "$connections" "$seconds" 2>/dev/null)"
    echo "$loaded"
    service_rates+=("$(echo "$loaded" | sed -nE 's/.*: ([0-9]+) deliveries\/s.*/\1/p')")
done

python3 - "${naive_rates[*]}" "${notify_rates[*]}" "${batch1_rates[*]}" "${batch2_rates[*]}" "${service_rates[*]}" <<'PY'
import statistics, sys
naive, notify, batch1, batch2, service = ([float(x) for x in arg.split()] for arg in sys.argv[1:6])
for i, (n, m, b1, b2, s) in enumerate(zip(naive, notify, batch1, batch2, service), 1):
    print(f"round {i}: {s:.0f} vs naive {n:.0f} = {s / n:.2f}x (vs naive with NOTIFY {m:.0f} = {s / m:.2f}x);"
          f" the statement alone {b1:.0f} = {b1 / n:.2f}x, two clients {b2:.0f} = {b2 / n:.2f}x")
n, m, s = statistics.median(naive), statistics.median(notify), statistics.median(service)
b1, b2 = statistics.median(batch1), statistics.median(batch2)
print(f"ratio of medians: {s / n:.2f}x the naive ceiling ({s:.0f} vs {n:.0f} deliveries/s)")
print(f"  against the naive with NOTIFY: {s / m:.2f}x ({m:.0f} deliveries/s)")
print(f"  the service's statement alone, one client: {b1 / n:.2f}x ({b1:.0f} deliveries/s);"
      f" two clients: {b2 / n:.2f}x ({b2:.0f})")
PY
