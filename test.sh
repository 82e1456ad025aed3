#!/usr/bin/env bash
# The whole test suite: installs what it needs on first use, then runs pytest.
# Extra arguments go to pytest, e.g.  sudo ./test.sh -k allocator -x
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"
cd "$REPO"
exec "$VENV/bin/python" -m pytest "$@"
