"""Stage 1 -> flag -> stage 2 as Prefect flows on a small seeded stamp set with planted label flips."""

import json

import numpy as np
import pandas as pd
import pytest

from flows.options import Stage1Options, Stage2Options
from storage.stampstore import write_dataset
from tasks.synthetic_stamps import make_stamp_set

TRAIN = dict(network="simple", epochs=4, batch_size=64, seed=0, device="cpu", patience=2)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp("stages")
    s = make_stamp_set(1000, flip=0.05, snr=(15.0, 60.0), seed=3)
    write_dataset(d / "ds", s.stamps, s.table, {"seed": 3})
    return d, s


@pytest.fixture(scope="module")
def stage1_run(planted, prefect_harness):
    from flows.train import stage1
    d, s = planted
    r = stage1(Stage1Options(dataset=[d / "ds"], out=d / "s1", gallery=4, **TRAIN))
    return d, s, r


def test_planted_flips_are_flagged_far_above_base_rate(stage1_run):
    d, s, r = stage1_run
    un = pd.read_parquet(d / "s1" / "unlabel.parquet")
    assert len(un) == 1000 and un["stamp_id"].is_unique and un["oof_prob"].between(0, 1).all()
    assert set(un.columns) >= {"stamp_id", "label", "oof_prob", "fold", "flagged", "rule"}
    flagged = un.set_index("stamp_id").loc[s.table["stamp_id"], "flagged"].to_numpy()
    base_rate = flagged.mean()
    rate_among_flipped = flagged[s.flipped].mean()
    assert rate_among_flipped > 0.7, rate_among_flipped
    assert rate_among_flipped > 5 * base_rate
    # metadata: the stage-1 model ids and the dataset hash
    import pyarrow.parquet as pq
    meta = json.loads(pq.read_schema(d / "s1" / "unlabel.parquet").metadata[b"rbflow.stage1"])
    assert len(meta["model_ids"]) == 5 and list(meta["dataset_hashes"].values())[0]
    assert (d / "s1" / "flagged_gallery.png").stat().st_size > 1000


def test_same_seed_same_oof_and_folds_resume(stage1_run):
    from models.stages import run_fold
    d, s, r = stage1_run
    oof0 = pd.read_parquet(d / "s1" / "folds" / "fold0" / "oof.parquet")
    opts = {k: TRAIN.get(k) for k in ("network", "epochs", "batch_size", "seed", "device", "patience")}
    opts.update(n_logits=2, lr=1e-3)
    # the finished fold is not retrained...
    rec = run_fold([str(d / "ds")], str(d / "s1"), 0, opts)
    assert rec.cached
    # ...and retraining it from scratch gives the same out-of-fold probabilities on CPU
    (d / "s1" / "folds" / "fold0" / "fold.json").unlink()
    rec = run_fold([str(d / "ds")], str(d / "s1"), 0, opts)
    assert not rec.cached
    oof1 = pd.read_parquet(d / "s1" / "folds" / "fold0" / "oof.parquet")
    np.testing.assert_array_equal(oof0["oof_prob"].to_numpy(), oof1["oof_prob"].to_numpy())


def test_stage2_modes_write_immutable_model_dirs(stage1_run):
    from flows.train import stage2
    from models.export import load_exported, score_stamps
    d, s, r = stage1_run
    base = dict(dataset=[d / "ds"], unlabel=d / "s1" / "unlabel.parquet", **TRAIN)
    r_un = stage2(Stage2Options(mode="unlabelled", out=d / "m_un", l_ce=0.6, l_lds=0.4, **base))
    n_flagged = int(pd.read_parquet(d / "s1" / "unlabel.parquet")["flagged"].sum())
    assert r_un["n_unlabelled"] == n_flagged and r_un["n_train"] == 1000
    r_rm = stage2(Stage2Options(mode="removed", out=d / "m_rm", l_ce=1.0, l_lds=0.0, l_ech=0.0, epochs=2,
                                **{k: v for k, v in base.items() if k != "epochs"}))
    assert r_rm["n_train"] == 1000 - n_flagged and r_rm["n_removed"] == n_flagged
    meta = json.loads((d / "m_un" / "model.json").read_text())
    assert meta["mode"] == "unlabelled" and meta["unlabel"]["sha256"]
    assert list(meta["datasets"].values())[0]
    prog = load_exported(d / "m_un" / "model.pt2")
    p = score_stamps(prog, s.stamps[:300], 128)
    assert p.shape == (300,) and np.all((p >= 0) & (p <= 1))
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(s.clean_label[:300], p) > 0.9
    from models.stages import run_stage2
    with pytest.raises(FileExistsError, match="never modified"):
        run_stage2([str(d / "ds")], str(d / "s1" / "unlabel.parquet"), str(d / "m_un"), {"mode": "all"})
