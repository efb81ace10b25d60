#!/usr/bin/env bash
# Cold start: from exec of the release binary to the first `GET /readyz` = 200, on a fresh
# database each time (so migrations are included), for each store. Needs curl and psql.
#
#     tools/cold-start.sh [runs=5]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
server="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}"
cargo build --release --quiet
folder="target/cold-start"
mkdir -p "$folder"

start() { # database URL -> milliseconds to ready
    local port=$((20000 + RANDOM % 20000)) began now pid
    began=$(date +%s%N)
    DATABASE_URL="$1" INBOX_WEBHOOK_SECRETS=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw \
        INBOX_API_TOKENS=t INBOX_LISTEN="127.0.0.1:$port" RUST_LOG=warn \
        target/release/prediction-inbox serve &
    pid=$!
    until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.002; done
    now=$(date +%s%N)
    kill "$pid"
    wait "$pid" || true
    echo $(((now - began) / 1000000))
}

for store in sqlite postgres; do
    times=()
    for run in $(seq "$runs"); do
        if [ "$store" = sqlite ]; then
            rm -f "$folder"/cold.db*
            url="sqlite://$folder/cold.db"
        else
            psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS inbox_cold" -c "CREATE DATABASE inbox_cold" 2>/dev/null
            url="$server/inbox_cold"
        fi
        times+=("$(start "$url")")
    done
    echo "$store: ${times[*]} ms to /readyz = 200 (fresh database, migrations included)"
done
psql -q "$server/postgres" -c "DROP DATABASE IF EXISTS inbox_cold" 2>/dev/null
rm -rf "$folder"
