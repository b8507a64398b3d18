#!/usr/bin/env bash
# Install executioner and its test tools into .venv (and, as root, the Debian packages the
# network-filesystem, clock-skew and Slurm tests use), start a throwaway Slurm cluster
# (scripts/slurm-local.sh) unless SLURM_CONF already names one, then run the whole test suite.
source "$(dirname "$0")/_venv.sh"
source "$(dirname "$0")/_system_packages.sh"
started_slurm=""
if [ -z "${SLURM_CONF:-}" ]; then
  # its own directory and ports, so a cluster started by hand with slurm-local.sh can stay up
  export EXEC_SLURM_DIR="${EXEC_SLURM_DIR:-/tmp/exec-slurm-test}" EXEC_SLURM_CTLD_PORT=7817 \
    EXEC_SLURM_D_PORT=7818 EXEC_SLURM_DBD_PORT=7819 EXEC_SLURM_DB_PORT=3407
  if out=$(scripts/slurm-local.sh start 2>/tmp/exec-slurm-start.log); then
    eval "$out"
    export SLURM_CONF
    started_slurm=1
    echo "Slurm test cluster up: SLURM_CONF=$SLURM_CONF" >&2
  else
    echo "no Slurm test cluster (the Slurm tests will skip): $(tail -n 3 /tmp/exec-slurm-start.log)" >&2
  fi
fi
if [ "${CI:-}" = "true" ]; then
  export EXEC_REQUIRE_SLURM=1  # in CI a Slurm test that cannot reach its cluster fails
fi
status=0
python -m pytest "$@" || status=$?
if [ -n "$started_slurm" ]; then
  scripts/slurm-local.sh stop
fi
exit $status
