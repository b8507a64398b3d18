#!/usr/bin/env bash
# Install executioner and its test tools into .venv, then run the whole test suite.
source "$(dirname "$0")/_venv.sh"
exec python -m pytest "$@"
