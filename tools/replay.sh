#!/usr/bin/env bash
# Instructions the service's ingest path takes per delivery, from the deterministic replay
# (benches/replay.rs): verification, parsing and the batch plan, counted by callgrind. The count
# repeats to the instruction for the same binary and inputs, whatever the machine is doing, so it
# tells a change from the day's weather. Prints the total and the count per delivery, and that
# count without SHA-256's compression function.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "replay.sh: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
binary="$(cargo bench --bench replay --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "replay" and m.get("executable"):
        print(m["executable"])')"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
# Only inside `replay` itself: building and signing the deliveries is not counted.
summary="$(valgrind --tool=callgrind --callgrind-out-file="$out" --toggle-collect='replay::replay' \
    "$binary" 2>/dev/null)"
total="$(awk '/^totals:/ {print $2}' "$out")"
deliveries="$(echo "$summary" | awk '/^replayed/ {print $2}')"
# valgrind's CPU has no SHA extensions, so under it SHA-256 runs its portable code, which the
# service uses only on a CPU without them (this machine's has them). Its share is printed apart:
# it is fixed by the scheme (every byte of every body is hashed), and it hides the rest.
sha="$(callgrind_annotate "$out" 2>/dev/null | awk '/sha2::sha256::soft::compress/ {gsub(",", "", $1); s += $1} END {print s + 0}')"
echo "$summary"
echo "instructions: $total in all, $((total / deliveries)) per delivery"
echo "  of which SHA-256's compression function: $((sha / deliveries)) per delivery; the rest: $(((total - sha) / deliveries)) per delivery"
