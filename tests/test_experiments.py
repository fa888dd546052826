"""The experiment grid's logic on tiny synthetic datasets (tasks/experiments.py, tasks/baseline.py)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.time import Time
from sklearn.metrics import roc_auc_score

from storage.stampstore import open_dataset, write_dataset
from tasks import experiments as X
from tasks.baseline import features, train_rf
from tasks.synthetic_stamps import make_stamp_set


def test_grid_and_noise_names():
    cells = X.grid_cells("quick")
    assert len(cells) == len(X.GRIDS["quick"]["methods"]) * 2 * 3
    assert {c.seed for c in cells} == {0, 1, 2}
    assert X.Noise.parse("tail-0.10") == X.Noise("tail", 0.10) and X.Noise.parse("survey").name == "survey"
    assert len(X.grid_cells("paper")) == 12 * 7 * 3
    with pytest.raises(ValueError):
        X.grid_cells("quick", methods=["nope"])
    with pytest.raises(ValueError):
        X.Noise.parse("uniform-0.7")


def test_uniform_flips_exact_count_and_seeded():
    lab = np.r_[np.ones(400, int), np.zeros(600, int)]
    f = X.plant_flips(lab, X.Noise("uniform", 0.05), seed=1)
    assert f[lab == 1].sum() == 20 and f[lab == 0].sum() == 30
    assert np.array_equal(f, X.plant_flips(lab, X.Noise("uniform", 0.05), seed=1))
    assert not np.array_equal(f, X.plant_flips(lab, X.Noise("uniform", 0.05), seed=2))
    assert not X.plant_flips(lab, X.Noise(), seed=1).any()


def test_tail_flips_sit_in_the_tails():
    rng = np.random.default_rng(0)
    lab = (rng.random(4000) < 0.4).astype(int)
    p = np.clip(np.where(lab == 1, rng.beta(8, 2, 4000), rng.beta(2, 8, 4000)), 0, 1)
    f = X.plant_flips(lab, X.Noise("tail", 0.05), seed=0, ref_scores=p)
    assert f[lab == 1].sum() == round(0.05 * (lab == 1).sum())
    own = np.where(lab == 1, p, 1 - p)  # confidence in the pre-flip label
    q = np.empty(len(p))
    for c in (0, 1):
        m = lab == c
        q[m] = pd.Series(own[m]).rank(pct=True).to_numpy()
    assert np.mean(q[f] > 0.9) > 0.5  # most flips in the top decile (uniform: 0.1)
    assert np.median(q[f]) > 0.85
    new = 1 - lab  # after the flip the score disagrees with the label: the tail of the new label's scores
    gap = np.abs(p - new)
    assert np.median(gap[f]) > np.quantile(np.abs(p - lab), 0.95)
    u = X.plant_flips(lab, X.Noise("uniform", 0.05), seed=0)
    assert 0.3 < np.median(q[u]) < 0.7
    with pytest.raises(ValueError):
        X.plant_flips(lab, X.Noise("tail", 0.05), seed=0)


def test_flagging_study_against_a_known_set():
    n = 100
    t = pd.DataFrame({"survey_label": np.r_[np.ones(50, int), np.zeros(50, int)],
                      "true_label": np.r_[np.ones(50, int), np.zeros(50, int)], "snr": np.r_[np.full(50, 5.0),
                                                                                            np.full(50, 30.0)]})
    t.loc[[60, 61], "true_label"] = 1  # two of the survey's own errors (bogus labels on reals, S/N 30)
    planted = np.zeros(n, bool)
    planted[[0, 1, 70, 71, 72]] = True
    t["planted_flip"] = planted
    t["label"] = np.where(planted, 1 - t["survey_label"], t["survey_label"])
    flagged = np.zeros(n, bool)
    flagged[[0, 70, 71, 60, 80]] = True  # 3 planted found, 1 own error found, 1 false alarm
    s = X.flagging_study(t, flagged, snr_edges=(10.0, 20.0), seed=0)
    rows = {r["bin"]: r for r in s["bins"]}
    a = rows["all"]
    assert a["n_flagged"] == 5 and a["planted"]["n_target"] == 5 and a["own"]["n_target"] == 2
    assert a["planted"]["precision"] == pytest.approx(3 / 5) and a["planted"]["recall"] == pytest.approx(3 / 5)
    assert a["own"]["precision"] == pytest.approx(1 / 5) and a["own"]["recall"] == pytest.approx(1 / 2)
    assert a["any"]["precision"] == pytest.approx(4 / 5)
    ex = a["planted_excl_own"]  # the flag on own error 60 set aside: 3 planted of 4 flags
    assert ex["n"] == 98 and ex["n_flagged"] == 4 and ex["precision"] == pytest.approx(3 / 4)
    assert ex["recall"] == pytest.approx(3 / 5)
    hi = rows["snr>10"]  # rows 50..99: flagged 70, 71, 60, 80; planted 70, 71, 72
    assert hi["n_flagged"] == 4 and hi["planted"]["precision"] == pytest.approx(2 / 4)
    assert hi["planted"]["recall"] == pytest.approx(2 / 3)
    assert hi["planted"]["random_expected_precision"] == pytest.approx(3 / 50)
    assert rows["<10"]["planted"]["recall"] == pytest.approx(1 / 2)
    assert 0 <= hi["planted"]["random_precision"] <= 1


def test_stricter_flag_cuts_trade_recall_for_precision():
    n = 1000
    rng = np.random.default_rng(3)
    t = pd.DataFrame({"survey_label": rng.integers(0, 2, n), "snr": np.full(n, 30.0)})
    t["true_label"] = t["survey_label"]
    planted = np.zeros(n, bool)
    planted[:20] = True
    t["planted_flip"] = planted
    t["label"] = np.where(planted, 1 - t["survey_label"], t["survey_label"])
    # out-of-fold P(real): the planted flips are scored confidently as their true class;
    # 100 correct labels are hard (other-class probability uniform in (0.5, 0.85))
    p = np.where(t["true_label"] == 1, 0.95, 0.05).astype(float)
    p[planted] = np.where(t["true_label"][planted] == 1, 0.97, 0.03)
    hard = np.arange(20, 120)
    other = rng.uniform(0.5, 0.85, len(hard))
    p[hard] = np.where(t["label"][hard] == 1, 1 - other, other)
    cuts = {c["cut"]: c for c in X.flag_cut_sweep(t, p, cuts=(0.5, 0.9))}
    assert cuts[0.5]["n_flagged"] == 120 and cuts[0.5]["planted"]["precision"] == pytest.approx(20 / 120)
    assert cuts[0.9]["n_flagged"] == 20 and cuts[0.9]["planted"]["precision"] == 1.0
    assert cuts[0.9]["planted"]["recall"] == 1.0
    s = X.flagging_study(t, (np.where(t["label"] == 1, 1 - p, p) > 0.5), oof_prob=p)
    assert [c["cut"] for c in s["cuts"]] == list(X.FLAG_CUTS)
    with pytest.raises(ValueError, match="oof_prob has 3 entries"):
        X.flag_cut_sweep(t, p[:3])


def test_rf_baseline_beats_chance_on_separable_data():
    tr = make_stamp_set(600, flip=0.0, seed=1)
    te = make_stamp_set(400, flip=0.0, seed=2)
    rf = train_rf(features(tr.table, tr.stamps), tr.clean_label, seed=0, n_estimators=60)
    p = rf.predict_proba(features(te.table, te.stamps).to_numpy())[:, 1]
    assert roc_auc_score(te.clean_label, p) > 0.85


def _tns_for(table: pd.DataFrame) -> pd.DataFrame:
    reals = table[table["true_label"] == 1]
    disc = Time(reals["mjd"].to_numpy() - 1, format="mjd").iso
    return pd.DataFrame({"Name": [f"AT 2026{i:04d}" for i in range(len(reals))], "ra_deg": reals["ra"].to_numpy(),
                         "dec_deg": reals["dec"].to_numpy(), "Discovery Date (UT)": disc})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    tr = make_stamp_set(500, flip=0.03, snr=(15.0, 60.0), seed=5, night="2026-01-05")
    te = make_stamp_set(300, flip=0.0, snr=(15.0, 60.0), seed=6, night="2026-01-06", n_images=8)
    write_dataset(d / "train", tr.stamps, tr.table, {"seed": 5})
    write_dataset(d / "held", te.stamps, te.table, {"seed": 6})
    _tns_for(te.table).to_csv(d / "tns.csv", index=False)
    ctx = X.ExperimentContext(train_dirs=(str(d / "train"),), heldout_dirs=(str(d / "held"),), tns=str(d / "tns.csv"),
                              out=str(d / "out"), work=str(d / "work"), folds=2, epochs=1, batch_size=64,
                              patience=1, device="cpu", n_boot=50, threads=1, rf_trees=40)
    ctx = X.prepare_context(ctx)
    X.heldout_table(ctx)
    return d, ctx, tr


def test_derived_dataset_carries_exactly_the_planted_flips(tiny):
    d, ctx, tr = tiny
    dirs = X.training_sets(ctx, X.Noise("uniform", 0.10), seed=0)
    t = open_dataset(dirs[0]).table()
    assert (t["planted_flip"] == (t["label"] != t["survey_label"])).all()
    assert t["planted_flip"].sum() == round(0.1 * (t["survey_label"] == 1).sum()) + round(0.1 * (t["survey_label"] == 0).sum())
    from storage.loader import StampSource
    src = StampSource(dirs)
    assert np.array_equal(src.labels, t["label"].to_numpy()) and len(src) == 500
    assert open_dataset(dirs[0]).meta["content_hash"] != open_dataset(d / "train").meta["content_hash"]


def test_two_draws_of_tail_flips_at_one_noise_and_seed_do_not_overwrite_each_other(tiny):
    """Tail flips follow a reference stage 1's scores, so two runs with other training options
    (an --epochs ablation beside the grid) draw other flips at the same (noise, seed). Each draw
    gets its own directory: deriving the second leaves the first's labels as they were."""
    d, ctx, tr = tiny
    noise = X.Noise("tail", 0.10)
    rng = np.random.default_rng(0)
    ids = open_dataset(d / "train").table()["stamp_id"].to_numpy()
    ref_a, ref_b = (pd.Series(rng.uniform(size=len(ids)), index=ids) for _ in range(2))
    work = d / "work-draws"
    a = X.noisy_training_sets(ctx.train_dirs, work, noise, 0, ref_a)
    labels_a = open_dataset(a[0]).table()["label"].to_numpy()
    b = X.noisy_training_sets(ctx.train_dirs, work, noise, 0, ref_b)
    labels_b = open_dataset(b[0]).table()["label"].to_numpy()
    assert a != b and not np.array_equal(labels_a, labels_b)
    assert np.array_equal(open_dataset(a[0]).table()["label"].to_numpy(), labels_a)
    assert X.label_hashes(a) != X.label_hashes(b)
    assert X.noisy_training_sets(ctx.train_dirs, work, noise, 0, ref_a) == a  # the same draw: the same place
    assert np.array_equal(open_dataset(a[0]).table()["label"].to_numpy(), labels_a)


def test_reference_epochs_plant_another_runs_tail_flips(tiny):
    """An --epochs ablation compared with the grid must train on the grid's tail flips: with
    reference_epochs the tails come from the grid's reference stage 1, not one trained with the
    ablation's epochs. Keys change only where the reference does (tail noise, other epochs)."""
    from dataclasses import replace
    d, ctx, tr = tiny
    ctx = replace(ctx, out=str(d / "out-reference"), work=str(d / "work-reference"))  # its own stage 1s
    noise = X.Noise("tail", 0.10)
    grid = X.training_sets(ctx, noise, 0)  # epochs 1, its own reference
    longer = replace(ctx, epochs=2)
    pinned = replace(ctx, epochs=2, reference_epochs=1)
    ref_2 = X.stage1_dir(longer, X.Noise(), ctx.reference_seed) / "stage1.json"  # a 2-epoch reference
    assert X.training_sets(pinned, noise, 0) == grid and not ref_2.exists()
    X.training_sets(longer, noise, 0)
    assert ref_2.exists()
    assert X.stage1_dir(pinned, noise, 0) != X.stage1_dir(longer, noise, 0)
    tail, uniform = X.Cell("complex-all", "tail-0.10", 0), X.Cell("complex-all", "uniform-0.10", 0)
    assert X.cell_key(tail, pinned) != X.cell_key(tail, longer)
    assert X.cell_key(uniform, pinned) == X.cell_key(uniform, longer)
    with pytest.raises(ValueError, match="reference_epochs must be None or >= 1"):
        replace(ctx, reference_epochs=0)
    same = replace(ctx, reference_epochs=ctx.epochs)  # naming the default changes nothing
    assert X.cell_key(tail, same) == X.cell_key(tail, ctx) and X.stage1_dir(same, noise, 0) == X.stage1_dir(ctx, noise, 0)


def test_a_cached_stage1_hands_stage2_the_labels_it_was_trained_on(tiny):
    """Stage 2 must train on the labels stage 1 flagged. A cached stage 1 kept the paths of its
    training sets; if another run rewrote them there, stage 2 still gets sets derived afresh, and
    a stage 1 whose recorded labels no longer match what (noise, seed) derives is refused."""
    d, ctx, tr = tiny
    noise = X.Noise("uniform", 0.05)
    rec = X.run_stage1(ctx, noise, 0)
    good = X.label_hashes(rec["datasets"])
    assert rec["label_hashes"] == good
    t = open_dataset(rec["datasets"][0]).table()
    t["label"] = 1 - t["label"]  # another run's labels at the recorded path
    X.derive_dataset(d / "train", rec["datasets"][0], t, {"noise": "other"})
    assert X.label_hashes(rec["datasets"]) != good
    again = X.run_stage1(ctx, noise, 0)
    assert X.label_hashes(again["datasets"]) == good
    done = X.stage1_dir(ctx, noise, 0) / "stage1.json"
    saved = done.read_text()
    done.write_text(json.dumps({**json.loads(saved), "label_hashes": ["not-these"]}))
    try:
        with pytest.raises(RuntimeError, match="remove .* to train it again"):
            X.run_stage1(ctx, noise, 0)
    finally:
        done.write_text(saved)


def test_cells_run_are_cached_and_summarised(tiny):
    d, ctx, _ = tiny
    rf = X.Cell("rf-sep", "uniform-0.05", 0)
    r1 = X.run_cell(rf, ctx)
    assert not r1["cached"] and r1["metrics"]["auc"] > 0.7 and r1["truth"]["auc"] > 0.7
    p = X.cell_path(rf, ctx)
    mtime = p.stat().st_mtime_ns
    r2 = X.run_cell(rf, ctx)
    assert r2["cached"] and p.stat().st_mtime_ns == mtime and r2["key"] == r1["key"]
    base = X.run_cell(X.Cell("simple-all", "uniform-0.05", 0), ctx)
    rem = X.run_cell(X.Cell("complex-removed", "uniform-0.05", 0), ctx)  # stage 1 (2 folds) + removed
    assert rem["stage1"]["n"] == 500 and rem["network"] == "simple"
    env = rem["environment"]  # what a model's bits depend on besides its key: recorded, not keyed
    assert env["torch_threads"] == ctx.threads and env["torch"].startswith("2.13") and env["cores"] >= 1
    assert env["blas"] and env["cpu"]  # and the BLAS kernels numpy/scipy picked
    # a stand-in's files carry its network; the row's own network would write beside them, not over them
    assert X.cell_path(X.Cell("complex-removed", "uniform-0.05", 0), ctx).name == \
        "complex-removed__uniform-0.05__s0__on-simple.json" and rem["name"].endswith("__on-simple")
    own = replace(ctx, network="paper")
    assert X.cell_name(X.Cell("complex-removed", "uniform-0.05", 0), own) == "complex-removed__uniform-0.05__s0"
    assert X.cell_key(X.Cell("complex-removed", "uniform-0.05", 0), own) != rem["key"]
    assert X.cell_name(rf, own) == X.cell_name(rf, ctx) == rf.name
    assert (d / "out" / "scores" / "complex-removed__uniform-0.05__s0__on-simple.parquet").exists()
    study = json.loads((d / "out" / "flagging" / "uniform-0.05-s0.json").read_text())
    assert study["n_planted"] == 25 and study["bins"][0]["bin"] == "all"
    assert study["environment"]["torch_threads"] == ctx.threads
    # which flips a cell trained on: the same (noise, seed) gives the same labelled sets, and
    # planted flips change the sets' hashes from the sources' (recorded, not keyed)
    assert rem["label_hashes"] == study["label_hashes"] == base["label_hashes"]
    assert len(rem["label_hashes"]) == len(ctx.train_dirs) and not set(rem["label_hashes"]) & set(ctx.inputs["train"])
    assert [c["cut"] for c in study["cuts"]] == list(X.FLAG_CUTS)
    alt = study["alternatives"]["cnn+rf"]  # the CNN + feature-baseline flagger on the same folds
    assert alt["bins"][0]["n"] == 500 and alt["bins"][0]["planted"]["n_target"] == 25
    assert (d / "work").exists() and list((d / "work").rglob("rf_oof.parquet"))
    fpath = d / "out" / "flagging" / "uniform-0.05-s0.json"  # an older study, without cuts or alternatives:
    fpath.write_text(json.dumps({k: v for k, v in study.items() if k not in ("cuts", "alternatives")}))
    X.run_stage1(ctx, X.Noise("uniform", 0.05), 0)  # cached stage 1: the study is written again
    again = json.loads(fpath.read_text())
    assert again["cuts"] == study["cuts"] and again["bins"] == study["bins"]
    assert again["alternatives"] == study["alternatives"]
    assert base["metrics"]["n_real"] > 0
    # the same cell as if it had run on the SE-ResNet: summarised as a row of its own, not mixed in
    fake = {**rem, "network": "complex", "name": X.cell_name(X.Cell("complex-removed", "uniform-0.05", 0), own)}
    (d / "out" / "cells" / f"{fake['name']}.json").write_text(json.dumps(fake))
    sdir = d / "out" / "scores"
    (sdir / f"{fake['name']}.parquet").write_bytes((sdir / f"{rem['name']}.parquet").read_bytes())
    vat = {**rem, "cell": {**rem["cell"], "method": "complex-all-vat"}, "method": {**rem["method"], "name": "complex-all-vat"},
           "name": "complex-all-vat__uniform-0.05__s0__on-simple"}  # scored like rem, to pair against Simple-all
    (d / "out" / "cells" / f"{vat['name']}.json").write_text(json.dumps(vat))
    (sdir / f"{vat['name']}.parquet").write_bytes((sdir / f"{rem['name']}.parquet").read_bytes())
    s = X.summarize(ctx.out, n_boot=50)
    pair = {(p["a"], p["b"], p["network"], p["labels"]) for p in s["pairs"]}
    assert ("complex-all-vat", "simple-all", "simple", "truth") in pair  # Complex-all-CE on Simple is Simple-all
    assert not any(p["network"] == "complex" for p in s["pairs"])  # no SE-ResNet partner for either ordering
    rows = {(r["method"], r["network"]): r for r in s["rows"]}
    assert rows["complex-removed", "simple"]["stand_in"] and not rows["complex-removed", "complex"]["stand_in"]
    assert not rows["simple-all", "simple"]["stand_in"] and "vs_baseline" in rows["complex-removed", "complex"]["tns"]
    import importlib.util  # docs/scripts/results.py puts the two side by side, each under its network
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "rbflow_results", Path(__file__).resolve().parents[1] / "docs" / "scripts" / "results.py")
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    md = d / "results.md"
    runs = d / "out" / "runs.jsonl"  # a command run again to resume a cut-off grid: listed once
    runs.write_text("".join(json.dumps({"command": c}) + "\n" for c in ("rbflow experiments A", "rbflow experiments A",
                                                                        "rbflow experiments B")))
    assert results.main(["--out", str(d / "out"), "--md", str(md), "--n-boot", "20"]) == 0
    lines = md.read_text().splitlines()
    assert [ln for ln in lines if ln.startswith("rbflow experiments")] == ["rbflow experiments A", "rbflow experiments B"]
    assert sum(ln.startswith("| complex-removed (on simple) |") for ln in lines) == 3  # AUC, FPR, paired
    assert sum(ln.startswith("| complex-removed |") for ln in lines) == 3
    (d / "out" / "cells" / f"{fake['name']}.json").unlink()
    (d / "out" / "cells" / f"{vat['name']}.json").unlink()
    row = next(r for r in s["rows"] if r["method"] == "rf-sep")
    assert row["tns"]["vs_baseline"]["auc"]["diff_ci"][0] is not None
    assert {r["noise"] for r in s["flagging"]} == {"uniform-0.05"}
    assert {r["flagger"] for r in s["flagging"]} == {"cnn", "cnn+rf"}
    assert {(r["flagger"], r["cut"]) for r in s["flag_cuts"]} >= {("cnn", 0.5), ("cnn+rf", 0.9)}


def test_stage2_takes_the_flags_of_the_chosen_flagger_and_cut(tiny):
    """--flagger cnn+rf --flag-cut 0.7: a removed cell trains without exactly the stamps whose mean
    CNN + random-forest out-of-fold P(other class) exceeds 0.7 on stage 1's folds (the
    1-epoch CNN of these folds is too unsure for 0.9); its key and
    model are its own, while the paper's flags and the all rows keep their keys (their caches)."""
    from tasks.flagging import flag_at_cut
    d, ctx, _ = tiny
    strict = replace(ctx, out=str(d / "out-strict"), flagger="cnn+rf", flag_cut=0.7)
    X.heldout_table(strict)
    rem = X.Cell("complex-removed", "uniform-0.05", 0)
    assert X.cell_key(rem, strict) != X.cell_key(rem, ctx)
    assert X.cell_key(rem, replace(ctx, flagger="cnn", flag_cut=0.5)) == X.cell_key(rem, ctx)
    assert X.cell_key(X.Cell("simple-all", "uniform-0.05", 0), strict) == X.cell_key(X.Cell("simple-all", "uniform-0.05", 0), ctx)
    r = X.run_cell(rem, strict)
    s1 = X.run_stage1(ctx, X.Noise("uniform", 0.05), 0)
    un = pd.read_parquet(s1["unlabel"])
    mean = (un["oof_prob"].to_numpy() + X.rf_oof(s1["datasets"], Path(s1["dir"]), 0).reindex(un["stamp_id"]).to_numpy()) / 2
    want = flag_at_cut(un["label"].to_numpy(), mean, 0.7).flagged
    assert r["flags"]["flagger"] == "cnn+rf" and r["flags"]["cut"] == 0.7
    assert 0 < r["flags"]["n_flagged"] == int(want.sum()) < s1["n_flagged"]  # stricter than the paper's p = 0.5
    manifest = pd.read_parquet(r["flags"]["manifest"])
    assert np.array_equal(manifest["flagged"].to_numpy(), want) and np.allclose(manifest["oof_prob"], mean)
    import pyarrow.parquet as pq  # stage 1's lineage (model ids, dataset hashes) kept, under the new rule
    m1, m2 = (json.loads(pq.read_schema(f).metadata[b"rbflow.stage1"]) for f in (s1["unlabel"], r["flags"]["manifest"]))
    assert m2["model_ids"] == m1["model_ids"] and m2["dataset_hashes"] == m1["dataset_hashes"]
    assert m2["thresholds"] == {"real": pytest.approx(0.3), "bogus": 0.7} and m2["flagger"].startswith("cnn+rf")
    meta = json.loads((Path(r["info"]["model"]) / "model.json").read_text())
    assert meta["n_removed"] == int(want.sum()) and meta["n_train"] == 500 - int(want.sum())
    assert Path(meta["unlabel"]["path"]) == Path(r["flags"]["manifest"]).resolve()
    assert X.run_cell(rem, strict)["cached"]
    with pytest.raises(ValueError, match="flagger must be one of"):
        replace(ctx, flagger="rf")
    with pytest.raises(ValueError, match=r"flag_cut must be in \[0.5, 1\)"):
        replace(ctx, flag_cut=0.2)


def test_same_training_finds_the_simple_row_a_stand_in_trains():
    assert X.same_training("complex-all", "simple") == "simple-all"  # same data, same losses
    assert X.same_training("complex-all", "complex") == "complex-all"  # on its own network
    assert X.same_training("complex-all-vat", "simple") == "complex-all-vat"  # no Simple row with VAT
    assert X.same_training("complex-removed-ech", "simple") == "complex-removed-ech"
    assert all(a in X.METHODS and b in X.METHODS for a, b in X.ORDERINGS)


def test_paired_rows_pairs_the_shared_seeds_over_both_label_sets():
    rng = np.random.default_rng(3)
    n = 400
    y = (np.arange(n) % 4 == 0).astype(int)
    held = pd.DataFrame({"stamp_id": [f"s{i}" for i in range(n)], "val_class": np.where(np.arange(n) % 8 == 1, -1, y),
                         "tns_name": [f"AT{i}" for i in range(n)], "true_label": y,
                         "injection_id": [f"i{i}" if v else None for i, v in enumerate(y)],
                         "image": [f"img{i % 10}" for i in range(n)]})
    good = {s: y + rng.normal(0, 0.5, n) for s in (0, 1, 2)}
    poor = {s: y + rng.normal(0, 2.0, n) for s in (1, 2, 3)}
    same = X.paired_rows(held, good, good, n_boot=50)
    assert set(same) == {"tns", "truth"} and same["truth"]["seeds"] == [0, 1, 2]
    assert same["truth"]["auc"]["diff"] == 0 and same["tns"]["fpr_at_tpr90"]["diff"] == 0
    d = X.paired_rows(held, good, poor, n_boot=200)["truth"]
    assert d["seeds"] == [1, 2]  # only the seeds both rows have
    assert d["auc"]["diff_ci"][0] > 0 and d["fpr_at_tpr90"]["diff_ci"][1] < 0  # A is better, resolved
    assert X.paired_rows(held, {0: good[0]}, {1: poor[1]}) == {}


def test_rescoring_a_trained_cell_scores_its_own_model_on_another_night(tiny):
    """--rescore-from: the same model scored on another held-out night without training again.
    Rescored on the night it was trained for, it gives the cell's own scores bit for bit; on a
    new night its scores are the model's there, its record keeps the source's training and names
    its source; a row that keeps no model is refused with why."""
    from flows.options import ExperimentsOptions
    from models.scoring import score_dataset
    d, ctx, _ = tiny
    src = X.run_cell(X.Cell("simple-all", "uniform-0.05", 0), ctx)
    rf = X.run_cell(X.Cell("rf-sep", "uniform-0.05", 0), ctx)
    te = make_stamp_set(200, flip=0.0, snr=(15.0, 60.0), seed=8, night="2026-01-07", n_images=6)
    write_dataset(d / "held2", te.stamps, te.table, {"seed": 8})
    _tns_for(te.table).to_csv(d / "tns2.csv", index=False)
    other = X.prepare_context(replace(ctx, heldout_dirs=(str(d / "held2"),), tns=str(d / "tns2.csv"),
                                      out=str(d / "out-rescored")))
    X.heldout_table(other)
    r = X.rescore_cell(src, other)
    assert not r["cached"] and r["key"] != src["key"] and r["key"] == X.rescore_key(src, other)
    assert r["rescored_from"]["key"] == src["key"] and r["info"] == src["info"] and r["train"] == src["train"]
    assert r["inputs"]["train"] == src["inputs"]["train"] and r["inputs"]["heldout"] != src["inputs"]["heldout"]
    assert r["counts"]["n_detections"] == 200 and r["heldout_dirs"] == [str(d / "held2")]
    got = pd.read_parquet(d / "out-rescored" / "scores" / f"{src['name']}.parquet")
    want = score_dataset(src["info"]["model"], d / "held2", batch_size=128)
    assert len(got) == 200 and np.allclose(got["score"].to_numpy(), want, atol=1e-6)
    p = d / "out-rescored" / "cells" / f"{src['name']}.json"
    mtime = p.stat().st_mtime_ns
    assert X.rescore_cell(src, other)["cached"] and p.stat().st_mtime_ns == mtime
    home = replace(ctx, out=str(d / "out-rescored-home"))  # the night it was scored on when trained
    X.heldout_table(home)
    h = X.rescore_cell(src, home)
    a = pd.read_parquet(d / "out" / "scores" / f"{src['name']}.parquet")
    b = pd.read_parquet(d / "out-rescored-home" / "scores" / f"{src['name']}.parquet")
    assert a["stamp_id"].tolist() == b["stamp_id"].tolist() and np.array_equal(a["score"], b["score"])
    assert h["metrics"]["auc"] == src["metrics"]["auc"] and h["truth"]["auc"] == src["truth"]["auc"]
    assert "keeps no model" in X.why_not_rescorable(rf, other)
    with pytest.raises(ValueError, match="rf-sep__uniform-0.05__s0: cannot rescore: it keeps no model"):
        X.rescore_cell(rf, other)
    elsewhere = X.prepare_context(replace(other, train_dirs=(str(d / "held"),)))
    assert "trained on other nights" in X.why_not_rescorable(src, elsewhere)
    # The flow's plan: the picked records it can score, the others skipped with why.
    cells = [X.Cell("simple-all", "uniform-0.05", 0), X.Cell("rf-sep", "uniform-0.05", 0)]
    plan = X.rescore_plan(ctx.out, cells, other)
    assert [r["key"] for r in plan.records] == [src["key"]]
    assert plan.skipped == [{"cell": "rf-sep__uniform-0.05__s0", "why": X.why_not_rescorable(rf, other)}]
    assert X.rescore_plan(ctx.out, [X.Cell("simple-all", "uniform-0.05", 1)], other).records == []
    gone = X.rescore_plan(ctx.out, cells[:1], elsewhere)
    assert gone.records == [] and "other nights" in gone.skipped[0]["why"]
    assert X.write_failures(other.out, []) is None and not (Path(other.out) / "failed.json").exists()
    f = X.write_failures(other.out, [{"cell": "x", "error": "ValueError: boom"}, {"cell": "y", "error": "E: 1"}])
    assert [e["cell"] for e in json.loads(f.read_text())["failed"]] == ["x", "y"]
    # Merged per cell: y fails again with a new error, z is new, x (not picked this time) stays.
    X.write_failures(other.out, [{"cell": "y", "error": "E: 2"}, {"cell": "z", "error": "E: 3"}])
    assert json.loads(f.read_text())["failed"] == [{"cell": "x", "error": "ValueError: boom"},
                                                   {"cell": "y", "error": "E: 2"}, {"cell": "z", "error": "E: 3"}]
    X.write_failures(other.out, [], settled=["y", "z"])  # a later run wrote them: they leave the list
    assert [e["cell"] for e in json.loads(f.read_text())["failed"]] == ["x"]
    assert X.write_failures(other.out, [], settled=["x"]) is None and not f.exists()  # nothing left: removed
    s = X.summarize(other.out, n_boot=0)
    assert [(row["method"], row["noise"]) for row in s["rows"]] == [("simple-all", "uniform-0.05")]
    with pytest.raises(ValueError, match="rescore_from: .* is --out itself"):
        ExperimentsOptions(train=[d / "train"], heldout=[d / "held2"], tns=d / "tns2.csv", out=d / "o",
                           rescore_from=d / "o")


def test_the_flow_runs_a_cell_then_rescores_it_and_lists_what_it_skipped(tiny, prefect_harness):
    """The `experiments` flow end to end on a real (temporary) Prefect server: one cell trained
    and cached, then --rescore-from scores its model on another night and skips the random
    forest (no model) with why; a second run finds everything cached."""
    from flows.experiments import experiments
    from flows.options import ExperimentsOptions
    d, ctx, _ = tiny
    common = dict(train=[d / "train"], heldout=[d / "held"], tns=d / "tns.csv", folds=2, epochs=1, batch_size=64,
                  patience=1, device="cpu", n_boot=0, threads=1, rf_trees=40, noises=["uniform-0.10"], seeds=[0],
                  work=d / "fwork")
    r = experiments(ExperimentsOptions(**common, methods=["simple-all", "rf-sep"], out=d / "fout"))
    assert (r["cells"], r["ran"], r["failed"]) == (2, 2, [])
    assert not (d / "fout" / "failed.json").exists()
    te = make_stamp_set(120, flip=0.0, snr=(15.0, 60.0), seed=9, night="2026-01-07", n_images=4)
    write_dataset(d / "fheld2", te.stamps, te.table, {"seed": 9})
    _tns_for(te.table).to_csv(d / "ftns2.csv", index=False)
    again = {**common, "heldout": [d / "fheld2"], "tns": d / "ftns2.csv"}
    r = experiments(ExperimentsOptions(**again, methods=["simple-all", "rf-sep"], out=d / "fout2",
                                       rescore_from=d / "fout"))
    assert (r["cells"], r["ran"], r["cached"], r["failed"]) == (1, 1, 0, [])
    assert [s["cell"] for s in r["skipped"]] == ["rf-sep__uniform-0.10__s0"]
    rec = json.loads((d / "fout2" / "cells" / "simple-all__uniform-0.10__s0.json").read_text())
    assert rec["counts"]["n_detections"] == 120 and rec["rescored_from"]["heldout_dirs"] == [str(d / "held")]
    # An earlier run's failure of this cell (planted) leaves failed.json once a run settles it.
    X.write_failures(d / "fout2", [{"cell": "simple-all__uniform-0.10__s0", "error": "RuntimeError: earlier"}])
    r = experiments(ExperimentsOptions(**again, methods=["simple-all"], out=d / "fout2", rescore_from=d / "fout"))
    assert (r["ran"], r["cached"]) == (0, 1)
    assert not (d / "fout2" / "failed.json").exists()
