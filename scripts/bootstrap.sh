# Sourced by scripts/serve and scripts/test: make .venv with udfd and its
# first-party plugins installed, on a fresh machine too. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "udfd needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        # Debian ships venv separately; install it when we may
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            rm -rf .venv && "$PYTHON" -m venv .venv
        else
            echo "python3 -m venv failed: install your distribution's python3-venv" >&2
            exit 1
        fi
    fi
fi
VENV_PY="$ROOT/.venv/bin/python"
# pip's chatter goes to a log, shown only when an install fails
PIP_LOG="$ROOT/.venv/pip-install.log"
if ! "$ROOT/scripts/install" "$ROOT/.venv" --editable "${UDFD_EXTRAS:-fast}" >"$PIP_LOG" 2>&1; then
    cat "$PIP_LOG" >&2
    echo "installing udfd into .venv failed (log above, also in $PIP_LOG)" >&2
    exit 1
fi
