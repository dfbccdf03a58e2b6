#!/usr/bin/env bash
# Creates (once) the Python virtualenv the server tests drive edgelm with: the official
# `openai` client (pinned). Prints the venv's path. Idempotent: a venv that already imports
# openai is reused as is.
#   EDGELM_PY_VENV overrides the location (default: ~/.cache/edgelm-venv).
set -euo pipefail
venv="${EDGELM_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/edgelm-venv}"
if ! "$venv/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q "openai==1.109.1" >&2
fi
echo "$venv"
