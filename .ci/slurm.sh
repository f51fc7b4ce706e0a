#!/usr/bin/env bash
# Start or stop the single-node SLURM that tests/test_cluster_slurm.py runs against, with the shared recipes
# in ../shared/recipes (beside the project). Run as root. Usage: .ci/slurm.sh start|stop
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RECIPES=$(cd "$ROOT/.." && pwd)/shared/recipes

case "${1:-}" in
  start) RECIPE=$RECIPES/start_slurm.sh ;;
  stop)  RECIPE=$RECIPES/stop_slurm.sh ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
[ -f "$RECIPE" ] || { echo "slurm.sh: $RECIPE not found: CI expects shared/ beside the project" >&2; exit 1; }

if [ "$1" = start ]; then
  [ "$(id -u)" -eq 0 ] || { echo "slurm.sh: starting SLURM needs root (it installs and runs daemons)" >&2; exit 1; }
  # a fresh image has stale or no package lists: refresh them only when something must be installed
  for cmd in slurmctld slurmd munged sinfo; do
    if ! command -v "$cmd" >/dev/null; then
      echo "slurm.sh: $cmd missing; apt-get update before the recipe installs slurm-wlm and munge"
      apt-get update -q
      break
    fi
  done
fi
exec bash "$RECIPE"
