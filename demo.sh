#!/usr/bin/env bash
# The main job: installs what it needs on first use, then runs the testbed's headline command.
# Extra arguments go to it, e.g.  ./demo.sh --seed 7 (as root, or it re-runs itself under sudo)
set -euo pipefail
source "$(dirname "$0")/scripts/bootstrap.sh"
exec testbed demo "$@"
