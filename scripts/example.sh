#!/usr/bin/env bash
# Install executioner into .venv, run examples/etl.yaml with two local workers, show the result.
source "$(dirname "$0")/_venv.sh"
pool=${EXEC_POOL:-examples/pool}
exec-submit examples/etl.yaml --pool "$pool" --workers 2 --wait
exec-status "$pool"
exec-status "$pool" "$(ls -t "$pool" | grep -v '^workers$' | head -1)"
echo "report: $(cat examples/out/report.txt)"
