#!/usr/bin/env bash
# Installs what the tests need beside Rust: the OpenAPI validator, the official Python and
# JavaScript clients at the versions pinned here (tests/api/clients.rs runs them), and schemathesis
# (tests/api/schemathesis.rs). Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python3 -m pip install --quiet --disable-pip-version-check -r "$root/tests/requirements.txt"
venv="$root/target/clients/venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    -r "$root/tests/clients/python/requirements.txt" -r "$root/tests/schemathesis-requirements.txt"
(cd "$root/tests/clients/js" && npm ci --no-audit --no-fund --loglevel=error)
