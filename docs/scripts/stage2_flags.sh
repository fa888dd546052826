#!/usr/bin/env bash
# Stage 2 on better flags (docs/experiments/reading.md, "Stage 2 on better flags"): the
# quiet sky's 6 training nights (docs/scripts/flag_scale.sh with PRESET=ci-quiet simulates and
# builds them and trains their stage 1s), and the rows the paper's orderings compare (Simple-all,
# all+VAT, removed, unlabelled+VAT; Complex rows on the Simple stand-in), each trained twice: on
# the paper's flags (stage 1's CNN at p = 0.5) and on the flagger that meets the flagging target
# there (the CNN averaged with the feature baseline, flagged at P(other class) > 0.9). The two
# flaggers write two OUTs under docs/experiments/flag-scale/ci-quiet/stage2/ and share one WORK
# (the quiet sky's n06: its stage 1s, and the all rows' models, which take no flags, are reused).
# Every cell is scored on the experiments' held-out night, then its model on the val night
# (docs/scripts/val_night.sh), where the comparisons are read (on-val-night/).
# Resumes where it stopped (cells are cached). SEEDS / NOISES / FLAGS narrow it, e.g.
# SEEDS=0 NOISES=uniform-0.01 FLAGS=cnn+rf:0.9 bash docs/scripts/stage2_flags.sh
set -euo pipefail
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false RBFLOW_NO_PROGRESS=1
export OPENBLAS_CORETYPE=SkylakeX  # the kernels the quiet sky's stage 1s were trained with (flag_scale.sh)
R=.venv/bin/rbflow
K=${K:-6}
KK=n$(printf %02d $K)
S=runs/scale-ci-quiet
W=runs/experiments-scale/ci-quiet/$KK
O=docs/experiments/flag-scale/ci-quiet/stage2
METHODS="simple-all complex-all-vat complex-removed complex-unlabelled-vat"
TRAIN=$(.venv/bin/python -c "import datetime as d; print(' '.join('$S/train-' + str(d.date(2026,1,5)+d.timedelta(i)) for i in range($K)))")
for t in $TRAIN; do [ -f $t/dataset.json ] || { echo "missing $t: run PRESET=ci-quiet bash docs/scripts/flag_scale.sh first" >&2; exit 1; }; done
$R server start >/dev/null || $R server status
export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:4200/api}
COMMON="--epochs 20 --patience 5 --folds 5 --n-boot 200 --device cpu --threads 2 --stage1-network simple"
for SEED in ${SEEDS:-0 1}; do
  for F in ${FLAGS:-cnn:0.5 cnn+rf:0.9}; do
    FL=${F%%:*}; CUT=${F##*:}
    $R experiments --train $TRAIN --heldout runs/exp/held-2026-01-07 --tns runs/exp/survey/tns.csv \
      --noises ${NOISES:-survey uniform-0.01} --seeds $SEED --flagger $FL --flag-cut $CUT $COMMON --methods $METHODS \
      --out $O/$FL-$CUT/$KK --work $W
  done
done
if [ -f runs/exp/val/held-2026-01-08/dataset.json ]; then
  for F in ${FLAGS:-cnn:0.5 cnn+rf:0.9}; do
    FL=${F%%:*}; CUT=${F##*:}
    # the all rows take no flags: their models are the same under every flagger, scored once (cnn:0.5)
    M=$([ "$F" = cnn:0.5 ] && echo $METHODS || echo complex-removed complex-unlabelled-vat)
    $R experiments --train $TRAIN --heldout runs/exp/val/held-2026-01-08 --tns runs/exp/val/survey/tns.csv \
      --noises ${NOISES:-survey uniform-0.01} --seeds ${SEEDS:-0 1} --flagger $FL --flag-cut $CUT $COMMON --methods $M \
      --rescore-from $O/$FL-$CUT/$KK --out $O/on-val-night/$FL-$CUT/$KK --work $W
  done
fi
