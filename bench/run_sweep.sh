#!/usr/bin/env bash
# Run one part of bench/sweep.py (old | new) as N single-threaded processes, then merge.
#   N=2 bash bench/run_sweep.sh old        (this machine: ~1 h; a 16-core machine: ~6 min)
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:?old or new}; shift
n=${N:-2}
py=${PYTHON:-python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p bench/results/logs
rm -f bench/results/sweep_"$part".s*.json
for i in $(seq 0 $((n - 1))); do
  "$py" bench/sweep.py "$part" --shard "$i/$n" --tag ".s$i" "$@" > "bench/results/logs/sweep_$part.s$i.log" 2>&1 &
done
wait
"$py" bench/sweep.py "$part" --merge
