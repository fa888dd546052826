#!/usr/bin/env bash
# The flagging study at scale (docs/experiments/reading.md, "Flagging at scale"): does a stage 1
# trained on more stamps flag the label errors with higher precision? Simulates 18 nights of
# the `ci` survey (2026-01-05..22; the first two are the experiments' training nights, rebuilt
# bit for bit) into a survey of its own, builds them with injections, and runs stage 1 and the
# flagging study (Simple, 5 folds; the CNN and the cnn+rf flaggers) on the first 2, 6 and 18
# of them at the survey's own labels and at 1 % flips, uniform and in the tails (seed 0;
# SEEDS="1" NOISES="uniform-0.01" SCALES="6 18" adds a seed where it is cheap).
# Each scale writes its own OUT (docs/experiments/flag-scale/nNN/flagging/*.json) and trains
# one cheap removed cell per noise (on Simple: --network simple names it complex-removed__on-simple), scored on the experiments' held-out night.
# Needs the experiments' held-out night (docs/scripts/experiment_nights.sh) and, for the last
# step, the val night (docs/scripts/val_night.sh; skipped without it). Run from the repository
# root; it resumes where it stopped (cells and stage 1 are cached).
# STAGE1=complex trains the stage-1 folds on the SE-ResNet instead of Simple (the stand-in the
# issue allows on 2 cores), into docs/experiments/flag-scale/stage1-complex/ (~9 min per noise
# on 2 nights), e.g. STAGE1=complex SCALES=2 NOISES="uniform-0.01 survey" bash docs/scripts/flag_scale.sh
# PRESET=ci-quiet simulates the training nights from the `ci-quiet` preset instead (`ci` with the
# real-event rates cut 6x, so the survey's own label errors are near the paper's ~1 %) into
# runs/scale-ci-quiet, OUT docs/experiments/flag-scale/ci-quiet/ (reading.md, "Flagging on a quiet
# sky"); its removed cells are scored on the same held-out nights (of the `ci` and `val` surveys).
set -euo pipefail
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false RBFLOW_NO_PROGRESS=1
# SkylakeX (AVX-512) kernels, forced: this machine exports OPENBLAS_CORETYPE=Haswell, under which
# the two training nights hash 75197ab0/024b107e, not the experiments' 56f58a11/0f9e3d45.
export OPENBLAS_CORETYPE=SkylakeX
R=.venv/bin/rbflow
STAGE1=${STAGE1:-simple}
PRESET=${PRESET:-ci}
SUB=$([ "$PRESET" = ci ] || echo /$PRESET)$([ "$STAGE1" = simple ] || echo /stage1-$STAGE1)
O=docs/experiments/flag-scale$SUB
W=runs/experiments-scale$SUB
S=${S:-runs/scale$([ "$PRESET" = ci ] || echo -$PRESET)}
NIGHTS=$(.venv/bin/python -c "import datetime as d; print(' '.join(str(d.date(2026,1,5)+d.timedelta(i)) for i in range(18)))")
# One Prefect server for all the commands below (saves a temporary server's start per command).
$R server start >/dev/null || $R server status
export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:4200/api}
echo "server: $PREFECT_API_URL"
for N in $NIGHTS; do
  [ -f $S/train-$N/dataset.json ] && continue
  grep -q ",$N," $S/survey/manifest.csv 2>/dev/null || $R simulate --preset $PRESET --night $N --seed 0 --out $S/survey --cluster threads
  $R build --manifest $S/survey/manifest.csv --night $N --out $S/train-$N --seed 0
done
for K in ${SCALES:-2 6 18}; do
  TRAIN=$(for N in $(echo $NIGHTS | cut -d' ' -f1-$K); do echo -n "$S/train-$N "; done)
  $R experiments --train $TRAIN --heldout runs/exp/held-2026-01-07 --tns runs/exp/survey/tns.csv \
    --methods complex-removed --noises ${NOISES:-survey uniform-0.01 tail-0.01} --seeds ${SEEDS:-0} \
    --epochs 20 --patience 5 --folds 5 --n-boot 200 --device cpu --threads 2 --stage1-network $STAGE1 \
    --out $O/n$(printf %02d $K) --work $W/n$(printf %02d $K)
done
# The removed cells' models scored on the val night too (docs/scripts/val_night.sh builds it;
# 1,213 TNS reals against the ci night's 32): does more training data help the classifier?
if [ -f runs/exp/val/held-2026-01-08/dataset.json ]; then
  for K in ${SCALES:-2 6 18}; do
    TRAIN=$(for N in $(echo $NIGHTS | cut -d' ' -f1-$K); do echo -n "$S/train-$N "; done)
    KK=n$(printf %02d $K)
    $R experiments --train $TRAIN --heldout runs/exp/val/held-2026-01-08 --tns runs/exp/val/survey/tns.csv \
      --methods complex-removed --noises ${NOISES:-survey uniform-0.01 tail-0.01} --seeds ${SEEDS:-0} \
      --epochs 20 --patience 5 --folds 5 --n-boot 200 --device cpu --threads 2 --stage1-network $STAGE1 \
      --rescore-from $O/$KK --out $O/on-val-night/$KK --work $W/$KK
  done
fi
