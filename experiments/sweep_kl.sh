#!/usr/bin/env bash
# The matched-KL weight sweep of docs/results/sweep-kl (its PROTOCOL.md fixes every setting below).
#
#     experiments/sweep_kl.sh            # from the repository root; resumable
#
# One weight at a time (its six runs: two methods x three seeds, two at a time), so that each weight's evaluation
# is kept as soon as it exists: the pools (gzipped), their KL, the runs' per-step metrics and the report so far go
# to $KEEP. A point whose pool and KL are kept is not trained or sampled again, here or on another machine: the
# kept files are copied back into $OUT first.
set -euo pipefail
OUT=${OUT:-results/sweep-kl}
KEEP=${KEEP:-docs/results/sweep-kl}
IAMA=${IAMA:-iama}
export HF_HUB_OFFLINE=1

mkdir -p "$OUT/eval/pools" "$KEEP/pools" "$KEEP/runs"
for f in "$KEEP"/pools/*.jsonl.gz; do
  [ -e "$f" ] || continue
  plain="$OUT/eval/pools/$(basename "${f%.gz}")"
  [ -e "$plain" ] || gunzip -c "$f" > "$plain"
done
[ -e "$KEEP/kl.json" ] && [ ! -e "$OUT/eval/kl.json" ] && cp "$KEEP/kl.json" "$OUT/eval/kl.json"
[ -e "$KEEP/sweep.yaml" ] && [ ! -e "$OUT/sweep.yaml" ] && cp "$KEEP/sweep.yaml" "$OUT/sweep.yaml"

keep() {
  for f in "$OUT"/eval/pools/*.jsonl; do gzip -c "$f" > "$KEEP/pools/$(basename "$f").gz"; done
  cp "$OUT/eval/kl.json" "$KEEP/kl.json"
  cp "$OUT/sweep.yaml" "$OUT/report.md" "$OUT/report.json" "$OUT/fronts.png" "$KEEP/"
  mkdir -p "$KEEP/eval" && cp "$OUT/eval/report.md" "$OUT/eval/report.json" "$KEEP/eval/"
  for run in "$OUT"/runs/*/; do
    [ -e "$run/metrics.csv" ] && cp "$run/metrics.csv" "$KEEP/runs/$(basename "$run").csv"
  done
  return 0
}

for w in 0.5 0.1 0.9 0.3 0.7; do
  "$IAMA" sweep configs/sweep-grim-kl.yaml --seeds 0,1,2 --weights "$w" --primary-n 4 \
    --eval-offset 220 --eval-prompts 136 -M 8 --out "$OUT"
  keep
  echo "== weight $w kept in $KEEP =="
done
