#!/usr/bin/env bash
# The early-stopping ablation (docs/experiments/reading.md, "The gain grows with noise"): plain CE
# on the SE-ResNet, 3 seeds, training capped at 5 epochs, into its own OUT so that
# docs/results.md's rows stay the 20-epoch ones. ~3 min per cell on 2 cores. NOISES picks the
# label noise (default: survey tail-0.01 tail-0.10). The tail cells share the main grid's --work,
# and --reference-epochs 20 takes the tails from the grid's reference stage 1 (20 epochs), so they
# train on the grid's own flips (their label_hashes equal the grid's cells'). Then
#   .venv/bin/python docs/scripts/ablation_early_stop.py --n-boot 1000
# pairs it with the 20-epoch cells and the handling rows of docs/experiments/cells/. METHODS picks
# other rows under the same cap, e.g. the handling rows (their stage 1 is capped too):
#   METHODS="complex-removed complex-unlabelled-vat" NOISES="survey tail-0.10" bash docs/scripts/ablation_early_stop.sh
set -uo pipefail
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false RBFLOW_NO_PROGRESS=1
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
D=${DATA:-runs/exp}
for NOISE in ${NOISES:-survey tail-0.01 tail-0.10}; do
  WORK=runs/experiments; [ "$NOISE" = survey ] && WORK=runs/ablation-epochs-5  # as the survey cells ran
  .venv/bin/rbflow experiments --methods ${METHODS:-complex-all} --grid noise --network paper --noises "$NOISE" --seeds 0 1 2 \
  --train $D/train-2026-01-05 $D/train-2026-01-06 --heldout $D/held-2026-01-07 \
  --tns $D/survey/tns.csv --epochs 5 --patience 5 --reference-epochs 20 --folds 5 --n-boot 200 --device cpu --threads 2 \
  --out docs/experiments/ablations/epochs-5 --work $WORK
done
