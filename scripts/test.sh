#!/usr/bin/env bash
# graft's full test suite, on a fresh machine: creates the Python oracle venv (pinned onnx,
# onnxruntime, numpy from scripts/oracle-requirements.txt) if it is missing, then runs cargo test.
# Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${GRAFT_VENV:-$PWD/.venv}"
if ! "$VENV/bin/python" -c "import onnx, onnxruntime, numpy" 2>/dev/null; then
  echo "scripts/test.sh: creating the oracle venv at $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/oracle-requirements.txt
fi
export GRAFT_PYTHON="$VENV/bin/python"
# wgpu's Vulkan loader warns without it
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
exec cargo test --locked --no-fail-fast "$@"
