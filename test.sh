#!/usr/bin/env bash
# The whole test suite: installs what it needs on first use, then runs pytest.
# Extra arguments go to pytest, e.g.  ./test.sh -k allocator -x (as root, or it re-runs itself under sudo)
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"
cd "$REPO"
exec "$VENV/bin/python" -m pytest "$@"
