"""The weekly retraining deployment flow end to end on tiny nights: window, stage 1, flagging,
stage 2, validation on an unseen night, lineage and the reuse of a model for the same inputs."""

import json

import pytest

from flows.ops import NightlyBuildOptions, RetrainOptions

NIGHTS = ("2026-01-04", "2026-01-05")
VAL_NIGHT = "2026-01-06"


@pytest.fixture(scope="module")
def nights(tmp_path_factory, prefect_harness):
    from flows.deployments import nightly_build
    root = tmp_path_factory.mktemp("nights")
    common = dict(root=root, preset="ci", max_sensors=3, cluster="threads", workers=2)
    hashes = {}
    for i, n in enumerate(NIGHTS):
        hashes[n] = nightly_build(NightlyBuildOptions(night=n, seed=i, **common))["content_hash"]
    nightly_build(NightlyBuildOptions(night=VAL_NIGHT, inject=False, seed=7, **common))
    return root, hashes


def test_retrain_over_a_window_records_its_nights_and_validates_on_an_unseen_night(nights, tmp_path):
    from flows.deployments import retrain
    root, hashes = nights
    opts = RetrainOptions(root=root, out=tmp_path / "train", end_night=NIGHTS[-1], n_nights=3, folds=2, epochs=1,
                          n_boot=0, cluster="threads", workers=2)
    rec = retrain(opts)
    assert list(rec["nights"]) == list(NIGHTS)  # the window (end - 3, end], injected nights only
    assert {n: v["content_hash"] for n, v in rec["nights"].items()} == hashes
    assert rec["validation"]["dataset"].endswith(VAL_NIGHT)  # the newest non-injected night, never trained on
    assert rec["validation"]["auc"] is not None and 0.0 <= rec["validation"]["auc"] <= 1.0
    out = tmp_path / "train" / NIGHTS[-1]
    saved = json.loads((out / "retrain.json").read_text())
    assert saved["model_id"] == rec["model_id"] and saved["nights"] == rec["nights"]
    model = json.loads((out / rec["model"].split("/")[-1] / "model.json").read_text())
    assert sorted(model["datasets"].values()) == sorted(hashes.values())  # the model names its datasets
    # the same inputs again: the model directory (named by its inputs) is reused, not rewritten
    again = retrain(opts)
    assert again["model"] == rec["model"] and again["model_id"] == rec["model_id"]


def test_retrain_refuses_an_empty_window(nights, tmp_path):
    from flows.deployments import retrain
    root, _ = nights
    with pytest.raises(ValueError, match="no injected night with a dataset"):
        retrain(RetrainOptions(root=root, out=tmp_path / "t", end_night="2025-06-01", n_nights=2, cluster="threads"))
