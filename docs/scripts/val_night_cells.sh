#!/usr/bin/env bash
# The results table's rows at the survey's own labels, trained on the same two `ci` training
# nights as docs/experiments/ and scored on the `val` held-out night of val_night.sh
# (docs/experiments/reading.md, "The val night"). Cells go to docs/experiments/val-night/ (their
# own OUT: their keys hold the val night's content hash), working files to runs/experiments-val/.
# Cached cells are skipped, so a cut-off run resumes. METHODS and NOISES pick other rows/levels.
set -uo pipefail
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false RBFLOW_NO_PROGRESS=1
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
D=${DATA:-runs/exp}
NIGHT=${NIGHT:-2026-01-08}
METHODS=${METHODS:-simple-all rf-sep complex-all complex-unlabelled-vat complex-removed complex-all-vat}
.venv/bin/rbflow experiments --methods $METHODS \
  --grid paper --network paper --noises ${NOISES:-survey} --seeds 0 1 2 \
  --train $D/train-2026-01-05 $D/train-2026-01-06 --heldout $D/val/held-$NIGHT \
  --tns $D/val/survey/tns.csv --epochs 20 --patience 5 --folds 5 --n-boot 200 --device cpu --threads 2 \
  --out docs/experiments/val-night --work runs/experiments-val
