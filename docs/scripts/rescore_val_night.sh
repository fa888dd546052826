#!/usr/bin/env bash
# The same models on the other night (docs/experiments/reading.md, "The val night"), with
# `rbflow experiments --rescore-from` (trains nothing):
#   1. the val-night cells' models (val_night_cells.sh) scored on the ci held-out night 2026-01-07
#      -> docs/experiments/rescored/val-models-on-ci-night/
#   2. the SE-ResNet noise grid's models (complex_noise_grid.sh) and Simple-all on the grid's tail
#      flips (checks/simple-all-grid-flips) scored on the val night
#      -> docs/experiments/rescored/grid-on-val-night/ (its scores are not in git: 500 kB a cell)
# Models must still be in their WORK (runs/experiments-val/, runs/experiments/); the others are
# skipped with why. Cached records are skipped, so a cut-off run resumes.
set -uo pipefail
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false RBFLOW_NO_PROGRESS=1
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
D=${DATA:-runs/exp}
NIGHT=${NIGHT:-2026-01-08}
R=".venv/bin/rbflow experiments --grid paper --network paper --seeds 0 1 2 --device cpu --threads 2 --n-boot 200
   --train $D/train-2026-01-05 $D/train-2026-01-06"
VAL="--heldout $D/val/held-$NIGHT --tns $D/val/survey/tns.csv"
CI="--heldout $D/held-2026-01-07 --tns $D/survey/tns.csv"
NOISES=${NOISES:-tail-0.10 tail-0.01 uniform-0.01 uniform-0.05 tail-0.05}
$R $CI --rescore-from docs/experiments/val-night --noises survey \
  --methods simple-all complex-all complex-unlabelled-vat complex-removed complex-all-vat \
  --out docs/experiments/rescored/val-models-on-ci-night --work runs/experiments-val
for N in $NOISES; do
  $R $VAL --rescore-from docs/experiments/checks/simple-all-grid-flips --noises $N --methods simple-all \
    --out docs/experiments/rescored/grid-on-val-night --work runs/experiments
  $R $VAL --rescore-from docs/experiments --noises $N \
    --methods complex-all complex-unlabelled-vat complex-removed complex-all-vat \
    --out docs/experiments/rescored/grid-on-val-night --work runs/experiments
done
