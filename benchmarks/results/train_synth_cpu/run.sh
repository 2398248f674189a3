#!/bin/bash
# The longer CPU run recorded here (2026-12-02): a small ViTPose trained from scratch on 8,000
# synthetic images (15,684 people), COCO AP on the 300 held-out images (GT boxes, flip test).
# Run from the repository root; nice and one torch thread, as on the shared 2-core machine it ran on.
set -e
OUT=${1:-/tmp/train_synth_cpu}
export OMP_NUM_THREADS=1
nice -n 10 python -m vitpose synth "$OUT/data" --images 8000 --val-images 300 --seed 0
nice -n 10 python -m vitpose train --data "$OUT/data" --model benchmarks/results/train_synth_cpu/model.json \
  --epochs 5 --batch-size 16 --out "$OUT/run" --workers 1 --eval-every 1 --lr 1e-3 --layer-decay 1.0 \
  --aug rot_prob=0 --aug scale_factor=0 --aug half_body_prob=0 --log-every 50 --checkpoint-every 500
