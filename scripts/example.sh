#!/usr/bin/env bash
# Install executioner into .venv, run examples/etl.yaml with two local workers, show the result.
source "$(dirname "$0")/_venv.sh"
pool=${EXEC_POOL:-examples/pool}
set +e
out=$(exec-submit examples/etl.yaml --pool "$pool" --workers 2 --wait)
rc=$?
set -e
echo "$out"
exec-status "$pool" "${out%% *}"
echo "report: $(cat examples/out/report.txt)"
exit $rc
