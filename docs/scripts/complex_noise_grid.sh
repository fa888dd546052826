#!/usr/bin/env bash
# The SE-ResNet noise grid (docs/experiments/reading.md, "The noise grid on the SE-ResNet"):
# the four Complex rows the noise grid holds, 3 seeds, one noise level at a time, e.g.
#   bash docs/scripts/complex_noise_grid.sh uniform-0.01 uniform-0.05 uniform-0.10
# on the nights of docs/scripts/experiment_nights.sh. Cells already in docs/experiments/cells
# are read from the cache, so a cut-off run resumes. ~55 min per level on 2 cores.
# METHODS picks other rows, e.g. the four ECH rows:
#   METHODS="complex-unlabelled-ech-vat complex-all-ech complex-removed-ech complex-all-ech-vat" \
#     bash docs/scripts/complex_noise_grid.sh tail-0.01 tail-0.10
set -uo pipefail
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false RBFLOW_NO_PROGRESS=1
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
D=${DATA:-runs/exp}
METHODS=${METHODS:-complex-all complex-removed complex-all-vat complex-unlabelled-vat}
for NOISE in "$@"; do
  .venv/bin/rbflow experiments --methods $METHODS \
    --grid noise --network paper --noises "$NOISE" --seeds 0 1 2 \
    --train $D/train-2026-01-05 $D/train-2026-01-06 --heldout $D/held-2026-01-07 \
    --tns $D/survey/tns.csv --epochs 20 --patience 5 --folds 5 --n-boot 200 --device cpu --threads 2
  echo "noise level $NOISE done $(date +%T)"
done
