#!/usr/bin/env bash
# The experiment nights of docs/experiments/ (reading.md, "Commands"): three `ci` nights of the
# simulated survey; two training nights with injections, one held-out night without.
# Run from the repository root. OPENBLAS_CORETYPE=SkylakeX (on an AVX-512 CPU) gives the
# committed content hashes 56f58a11 / 0f9e3d45 / 1422a2e4; another BLAS kernel set gives
# other bits (reading.md, "The nights were rebuilt again on 2026-12-06").
set -euo pipefail
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false RBFLOW_NO_PROGRESS=1
# Forced, not defaulted: a machine may export another (these machines export Haswell, which gives
# 75197ab0 / 024b107e for the training nights; checked 2026-12-07).
export OPENBLAS_CORETYPE=SkylakeX
OUT=${1:-runs/exp}
R=.venv/bin/rbflow
for N in 2026-01-05 2026-01-06 2026-01-07; do
  $R simulate --preset ci --night $N --seed 0 --out $OUT/survey --cluster threads
done
for N in 2026-01-05 2026-01-06; do
  $R build --manifest $OUT/survey/manifest.csv --night $N --out $OUT/train-$N --seed 0
done
$R build --manifest $OUT/survey/manifest.csv --night 2026-01-07 --no-inject --out $OUT/held-2026-01-07 --seed 0
