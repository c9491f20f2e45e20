# Sourced by scripts/run.sh and scripts/test.sh (from the repository root): the project's own
# virtual environment, so nothing goes into the system Python (Debian refuses that: PEP 668) and a
# source tree that happens to be importable never passes for an install.
#   PYTHON           the Python 3.11+ that makes the environment (default python3)
#   JUKEBOT_VENV     where it lives (default .venv)
#   JUKEBOT_TORCH    auto (default: the CUDA build when nvidia-smi sees a GPU, else the CPU build),
#                    cpu, cuda, or skip (no torch: the bot alone, workers on other machines)
# `jukebot_install EXTRAS TORCH` installs jukebot (editable) with EXTRAS and sets PYTHON to the
# environment's interpreter; it reinstalls only when pyproject.toml, the extras or the torch choice
# changed since the last install (their hash sits in a stamp file inside the environment).

# The torch release the project is tested with. Always pinned: an unpinned torch on Linux pulls
# several GB of CUDA packages whatever the machine has.
TORCH_VERSION=2.13.0
JUKEBOT_TORCH_CPU_INDEX=${JUKEBOT_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
JUKEBOT_VENV=${JUKEBOT_VENV:-.venv}

jukebot_torch_choice() {
    case ${JUKEBOT_TORCH:-auto} in
    cpu | cuda | skip) echo "$JUKEBOT_TORCH" ;;
    auto)
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            echo cuda
        else
            echo cpu
        fi
        ;;
    *)
        echo "JUKEBOT_TORCH must be auto, cpu, cuda or skip, not '$JUKEBOT_TORCH'" >&2
        return 1
        ;;
    esac
}

jukebot_make_venv() {
    local base=${PYTHON:-python3} version package
    if ! command -v "$base" >/dev/null 2>&1; then
        echo "no '$base' here: install Python 3.11 or newer, or set PYTHON to one" >&2
        return 1
    fi
    if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "jukebot needs Python 3.11 or newer and $base is $("$base" -V 2>&1):" \
            "set PYTHON to a newer one" >&2
        return 1
    fi
    if ! "$base" -c 'import ensurepip, venv' 2>/dev/null; then
        # Debian and Ubuntu ship venv support (ensurepip) as a separate package.
        version=$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        package=python$version-venv
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing $package (python3 -m venv needs it)" >&2
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null ||
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        else
            echo "$base cannot make a virtual environment (no ensurepip): install it with" \
                "'sudo apt-get install $package', or set PYTHON to a Python 3.11+ that can" >&2
            return 1
        fi
    fi
    echo "creating the virtual environment $JUKEBOT_VENV" >&2
    "$base" -m venv --clear "$JUKEBOT_VENV"
}

jukebot_install_torch() {
    local python=$1 choice=$2
    case $choice in
    skip) ;;
    cuda) "$python" -m pip install -q "torch==$TORCH_VERSION" ;; # PyPI's Linux wheels are CUDA builds
    cpu)
        if "$python" - "$JUKEBOT_TORCH_CPU_INDEX" <<'PY'; then
import sys, urllib.request

try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10).close()
except Exception as exc:  # any failure means: use the configured index instead
    print(f"the PyTorch CPU index {sys.argv[1]} cannot be reached ({exc})", file=sys.stderr)
    sys.exit(1)
PY
            "$python" -m pip install -q --index-url "$JUKEBOT_TORCH_CPU_INDEX" "torch==$TORCH_VERSION"
        else
            echo "installing torch==$TORCH_VERSION from the configured package index instead" >&2
            "$python" -m pip install -q "torch==$TORCH_VERSION"
        fi
        ;;
    esac
}

# Whether the virtual environment's interpreter $2 is the same Python version as PYTHON=$1 (an
# explicit PYTHON=python3.12 must not be ignored because .venv was made with 3.11). A PYTHON that is not
# there is left for jukebot_make_venv to name; the venv stays.
jukebot_venv_matches() {
    local asked venv_version
    command -v "$1" >/dev/null 2>&1 || return 0
    asked=$("$1" -c 'import sys; print(*sys.version_info[:2])' 2>/dev/null) || return 0
    venv_version=$("$2" -c 'import sys; print(*sys.version_info[:2])' 2>/dev/null) || return 1
    if [ "$asked" != "$venv_version" ]; then
        echo "$JUKEBOT_VENV has Python ${venv_version/ /.}, PYTHON=$1 is ${asked/ /.}: making it again" >&2
        return 1
    fi
}

jukebot_install() {
    local extras=$1 torch=$2 python=$JUKEBOT_VENV/bin/python stamp=$JUKEBOT_VENV/.jukebot-installed want
    local torch_stamp=$JUKEBOT_VENV/.jukebot-torch
    case $torch in
    cpu | cuda | skip) ;;
    *) # never an unpinned torch (a multi-GB CUDA build of whatever is newest)
        echo "jukebot_install: the torch build must be cpu, cuda or skip, not '$torch'" >&2
        return 1
        ;;
    esac
    if [ -n "${PYTHON:-}" ] && [ "$PYTHON" != "$python" ] && [ -f "$JUKEBOT_VENV/pyvenv.cfg" ]; then
        jukebot_venv_matches "$PYTHON" "$python" || rm -rf "$JUKEBOT_VENV"
    fi
    if ! "$python" -m pip --version >/dev/null 2>&1; then
        jukebot_make_venv
    fi
    want=$("$python" - "$extras" "$torch" "$TORCH_VERSION" <<'PY'
import hashlib, sys
from pathlib import Path

print(hashlib.sha256(Path("pyproject.toml").read_bytes() + repr(sys.argv[1:]).encode()).hexdigest())
PY
    )
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        rm -f "$stamp"
        echo "installing jukebot${extras:+[$extras]} into $JUKEBOT_VENV (torch: $torch)" >&2
        if [ -f "$torch_stamp" ] && [ "$(cat "$torch_stamp")" != "$torch" ]; then
            # Another build of the same version counts as installed: remove it to switch.
            "$python" -m pip uninstall -q -y torch
        fi
        jukebot_install_torch "$python" "$torch"
        echo "$torch" >"$torch_stamp"
        "$python" -m pip install -q -e ".${extras:+[$extras]}"
        echo "$want" >"$stamp"
    fi
    PYTHON=$python
}
