#!/usr/bin/env bash
# Install executioner and its test tools into .venv (and, as root, the Debian packages the
# network-filesystem and clock-skew tests use), then run the whole test suite.
source "$(dirname "$0")/_venv.sh"
source "$(dirname "$0")/_system_packages.sh"
exec python -m pytest "$@"
