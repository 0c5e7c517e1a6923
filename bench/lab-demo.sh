#!/usr/bin/env bash
# Wall time of `podguard lab demo` (3 nodes x 2 pods, dual-stack), N runs.
#   bench/lab-demo.sh [RUNS]   (root; default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
cargo build --release --locked --bins >&2
times=()
for i in $(seq 1 "$RUNS"); do
  t0=$(date +%s%N)
  ./target/release/podguard lab demo >/dev/null 2>&1 || { echo "run $i: demo failed" >&2; exit 1; }
  t1=$(date +%s%N)
  times+=("$(( (t1 - t0) / 1000000 ))")
  echo "  run $i: ${times[-1]} ms" >&2
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "lab demo (3x2, dual-stack), %d runs: median %.1f s, min %.1f s, max %.1f s\n", NR, a[int((NR+1)/2)]/1000, a[1]/1000, a[NR]/1000}'
