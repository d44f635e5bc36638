#!/usr/bin/env bash
# The whole test suite (`make test`, CI): two pytest runs side by side — the
# end-to-end tests (in their fixed order, on the one lab they bring up) and
# everything else (lint, unit, Molecule) — each line prefixed with its stream.
# Extra arguments go to both runs (a -k that selects nothing in one of them is
# fine there).  The last lines name every test of both runs that failed,
# errored or skipped (a CI log is often read from its tail; in CI, where `CI`
# is set, a skip is reported as a failure: tests/conftest.py).  Exit status: non-zero if either run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTEST=.venv/bin/pytest
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

( "$PYTEST" tests/e2e "$@" 2>&1 | tee "$logs/e2e" | sed -u 's/^/[e2e] /' ) &
e2e=$!
"$PYTEST" tests/unit tests/lint tests/molecule "$@" 2>&1 | tee "$logs/rest" | sed -u 's/^/[rest] /'
rest=$?
wait "$e2e"
e2e_rc=$?
for stream in rest e2e; do
  # pytest's short summary: "FAILED path::test - message" (the message may be long);
  # tests/conftest.py adds "SKIPPED path::test - reason" (pytest's own "SKIPPED [n] file:line"
  # lines name no test).
  grep -E '^(FAILED|ERROR|SKIPPED) [^[]' "$logs/$stream" | sed -E "s/ - .*//; s/^/test.sh: [${stream}] /"
done
echo "test.sh: lint/unit/Molecule exit ${rest}, end-to-end exit ${e2e_rc} (5: nothing selected)"
for rc in "$rest" "$e2e_rc"; do
  if ((rc != 0 && rc != 5)); then
    exit 1
  fi
done
