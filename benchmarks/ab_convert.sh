#!/bin/bash
# A/B wall time of `bids2hf convert -q -j 1` for two source trees on the same dataset, the page
# cache dropped before each run (root), runs alternating so that drift of the machine hits both.
#   benchmarks/ab_convert.sh OLD_SRC NEW_SRC BIDS_DIR [REPEATS]
# e.g. git worktree add /tmp/wt-old c80c951; benchmarks/ab_convert.sh /tmp/wt-old/src src /data/bids 3
set -euo pipefail
old=$1 new=$2 bids=$3 repeats=${4:-3}
py=$(dirname "$0")/../.venv/bin/python
out=$(mktemp -d)/out
for i in $(seq "$repeats"); do
  for side in old new; do
    src=$old; [ "$side" = new ] && src=$new
    rm -rf "$out"; sync
    [ -w /proc/sys/vm/drop_caches ] && echo 3 > /proc/sys/vm/drop_caches
    "$py" -c "import bids2hf.cli, pyarrow.parquet, numpy" > /dev/null 2>&1  # the program warm
    start=$(date +%s.%N)
    PYTHONPATH=$src /usr/bin/time -f "%M KB RSS, %U s user, %S s sys" -o "$out.time" \
      "$py" -m bids2hf convert "$bids" "$out" -q -j 1 > /dev/null
    end=$(date +%s.%N)
    echo "$side $(echo "$end - $start" | bc) s, $(cat "$out.time")"
  done
done
rm -rf "$(dirname "$out")"
