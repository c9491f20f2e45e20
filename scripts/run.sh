#!/usr/bin/env bash
# Install jukebot and start the bot with local workers on the embedded defaults.
# Needs only DISCORD_TOKEN (environment or .env). Extra arguments go to `jukebot run`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import jukebot" 2>/dev/null; then
    "$PYTHON" -m pip install -q --disable-pip-version-check -e .
fi
exec "$PYTHON" -m jukebot run "$@"
