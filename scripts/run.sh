#!/usr/bin/env bash
# Install jukebot into the project's virtual environment (.venv) and start the bot with local
# workers on the embedded defaults. Needs only Python 3.11+ and DISCORD_TOKEN (environment or .env).
# Extra arguments go to `jukebot run`. JUKEBOT_TORCH=auto|cpu|cuda|skip picks the torch build
# (see scripts/venv.sh); `skip` installs the bot alone (then set JUKEBOT_GPUS=none).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh

torch=$(jukebot_torch_choice)
if [ "$torch" = skip ]; then extras=""; else extras="worker"; fi
jukebot_install "$extras" "$torch"
echo "starting the bot: jukebot run $*" >&2
exec "$PYTHON" -m jukebot run "$@"
