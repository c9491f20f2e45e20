#!/usr/bin/env bash
# Set up everything the tests need (the project's virtual environment .venv with the test and
# worker extras, a running Postgres) and run the whole suite.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

torch=$(jukebot_torch_choice) # its own line: a bad JUKEBOT_TORCH stops here (set -e)
jukebot_install worker,test "$torch"

# Chromaprint (curation's fingerprints) is a system library: Debian's libchromaprint1.
if ! ldconfig -p | grep -q libchromaprint; then
    echo "installing Debian's libchromaprint1" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libchromaprint1 >/dev/null
    else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libchromaprint1 >/dev/null; fi
fi

source scripts/ensure-postgres.sh

"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
"$PYTHON" -m mypy
"$PYTHON" -m pytest "$@"
