#!/usr/bin/env bash
# The reduced planted study committed under results/planted/ (a 2-core CPU shared with other jobs):
# a small dense planted set (the quick profile, with its cell cap lifted to all 1,000 cells) (1,000 cells x 64 genes, 16 TFs), alpha in {0, 0.4, 1}, the four arms,
# 3 seeds, d_model 32, 12 epochs. Usage: scripts/planted_study.sh [ALPHAS] [SEEDS]
set -euo pipefail
ALPHAS=${1:-"0 0.4 1"}
SEEDS=${2:-3}
BASE="synthetic:cells=1000,genes=64,tfs=16,in_degree=1.5,repress_frac=0.5,target_log_mean=0,seed=1"
for a in $ALPHAS; do
  SPEC="$BASE,alpha=$a"
  bioformer -q experiment planted --profile quick --seeds "$SEEDS" --out "results/planted/alpha$a" \
    --data "$SPEC" --prior "$SPEC" --genes hvg --n-hvg 64 --max-len 64 \
    --max-cells 1000 --d-model 32 --nhead 4 --d-z 8 --d-opm 8 --dropout 0.0 \
    --epochs 12 --batch-size 32 --lr 3e-3 --warmup-steps 20
done
