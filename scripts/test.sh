#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite on two pytest-xdist workers (each test file on one worker, so
# its module fixtures are built once), printing the 30 slowest tests; extra arguments go to pytest (`-n 0` for
# one process, `-n 4` for more workers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra -n "${TEST_WORKERS:-2}" --dist loadfile --durations=30 "$@"
