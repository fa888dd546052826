#!/usr/bin/env bash
# The held-out night of the `val` preset (docs/experiments/reading.md, "The val night"): one
# night of the `val` survey (raised event and artifact rates, 1024x1024 sensors), simulated and
# built without injections, its labels from the val survey's TNS list. Half the preset's sensors
# by default (SENSORS=2 of 4 per field: 64 fields x 2 sensors x 2 visits = 256 images); SENSORS=4
# builds the whole night (the half took 15 min on the 2 cores beside a training, so ~30 min). Run from the repository
# root; it writes under runs/ (git ignores it) and resumes where it stopped.
set -euo pipefail
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false RBFLOW_NO_PROGRESS=1
# The committed val night (content hash 1f69cfc0, docs/experiments/val-night/) was built with
# OpenBLAS's Haswell kernels (its dataset.json, `environment`): forced here so that the script
# rebuilds that night; SkylakeX kernels give other bits (reading.md, "The nights were rebuilt").
export OPENBLAS_CORETYPE=Haswell
OUT=${1:-runs/exp/val}
NIGHT=${NIGHT:-2026-01-08}
R=.venv/bin/rbflow
$R simulate --preset val --night $NIGHT --seed 0 --max-sensors ${SENSORS:-2} --out $OUT/survey
$R build --manifest $OUT/survey/manifest.csv --night $NIGHT --no-inject --out $OUT/held-$NIGHT --seed 0
