"""One frozen pydantic options model per flow: the flow's parameters and its CLI.

Each field's description is its ``--help`` text, the Prefect UI's parameter docs and
the deployment's parameter schema.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_NIGHT = "2026-01-05"  # the embedded default survey's first night


def _check_night(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        _dt.date.fromisoformat(v)
    except ValueError:
        raise ValueError(f"night must be YYYY-MM-DD, got {v!r}") from None
    return v


class FlowOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClusterMixin(BaseModel):
    cluster: str | None = Field(
        None,
        description="Dask cluster: a YAML cluster spec (deploy/dask/*.yaml), a scheduler address "
        "(tcp://host:port), 'threads' (no Dask, Prefect's thread pool) or none for "
        "deploy/dask/local.yaml (a LocalCluster). Read at the entry point only.")
    workers: int | None = Field(
        None, ge=1, le=256, description="Override the number of LocalCluster workers in the spec.")


class SimulateOptions(FlowOptions, ClusterMixin):
    preset: str = Field("ci", description="Survey preset: ci, ci-quiet, tomoe, ztf, val (tasks/simulate.py).")
    night: str = Field(DEFAULT_NIGHT, description="Night to simulate, YYYY-MM-DD; its seed derives from (seed, night).")
    seed: int = Field(0, ge=0, description="Survey seed: the static sky derives from it, each night from (seed, night).")
    out: Path = Field(..., description="Survey directory to write (nights accumulate in one directory).")
    max_sensors: int | None = Field(None, ge=1, description="Simulate only the first N sensors of each field (quick runs).")

    _night = field_validator("night")(_check_night)


class BuildInputsMixin(BaseModel):
    """What a build takes: shared by the build and the nightly build, which word the source
    and night fields for their own layout."""

    preset: str | None = Field(None, description="Simulate this survey preset first, then build from it.")
    manifest: Path | None = Field(None, description="Survey manifest.csv (real or simulated) to build from.")
    night: str | None = Field(None, description="Night to build (YYYY-MM-DD).")
    inject: bool = Field(True, description="Inject artificial sources (--no-inject: labels from the TNS list, for "
                         "validation nights).")
    seed: int = Field(0, ge=0, description="Seed of the injections (and of the simulation with a preset).")
    tns: Path | None = Field(None, description="TNS list for non-injected labels; default tns.csv beside the manifest.")
    config: Path | None = Field(None, description="YAML file overriding per-sensor settings (tasks.sensor.SensorConfig).")
    max_sensors: int | None = Field(None, ge=1, description="Build only the first N sensor images (quick runs).")
    force: bool = Field(False, description="Redo every sensor even when its part is complete (a clean rebuild).")

    _night = field_validator("night")(_check_night)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.preset is None) == (self.manifest is None):
            raise ValueError("give exactly one of preset or manifest")
        return self


class BuildOptions(FlowOptions, ClusterMixin, BuildInputsMixin):
    preset: str | None = Field(None, description="Simulate this survey preset into OUT/survey/ first, then build from it.")
    manifest: Path | None = Field(None, description="Survey manifest.csv (real or simulated) to build from.")
    night: str | None = Field(None, description="Night to build (YYYY-MM-DD); default: the preset's night, or every row of the manifest.")
    out: Path = Field(..., description="Dataset directory to write.")
    allow_outside_paths: bool = Field(False, description="Let manifest rows name files outside the manifest's directory (absolute or ../ paths); off: such rows are refused.")


class TrainingMixin(BaseModel):
    network: Literal["simple", "complex"] = Field("simple", description="simple: the VGG-like CNN; complex: SE-ResNet with csSE and FRN.")
    n_logits: Literal[1, 2] = Field(2, description="Output logits of the simple network (the complex one always has 2).")
    epochs: int = Field(8, ge=1, le=1000, description="Maximum epochs (early stopping on a validation split).")
    batch_size: int = Field(128, ge=8, le=8192, description="Training batch size.")
    lr: float = Field(1e-3, gt=0, lt=1, description="Adam learning rate.")
    patience: int = Field(3, ge=1, description="Early-stopping patience in epochs (validation AUC).")
    seed: int = Field(0, ge=0, description="Training seed (each fold derives its own).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device; auto = cuda when present.")


class Stage1Options(FlowOptions, TrainingMixin, ClusterMixin):
    dataset: list[Path] = Field(..., min_length=1, description="Dataset directories (one or more nights).")
    out: Path = Field(..., description="Stage-1 directory to write (fold models, unlabel.parquet).")
    folds: int = Field(5, ge=2, le=20, description="Number of folds, grouped by exposure+sensor, stratified by label.")
    flag_rule: Literal["p05", "confident"] = Field("p05", description="p05: out-of-fold prediction disagrees with the label at p=0.5 (the paper); confident: per-class thresholds (confident learning).")
    parallel_folds: bool = Field(False, description="Run folds in parallel on the Dask cluster (default: one after another).")
    gallery: int = Field(20, ge=0, le=200, description="Stamps per label in the flagged-stamp gallery PNG.")


class Stage2Options(FlowOptions, TrainingMixin):
    dataset: list[Path] = Field(..., min_length=1, description="Dataset directories (the ones stage 1 used).")
    unlabel: Path = Field(..., description="Stage-1 unlabel.parquet.")
    mode: Literal["all", "removed", "unlabelled"] = Field("unlabelled", description="all: every label as is; removed: drop flagged; unlabelled: keep flagged without labels (they enter through VAT's LDS).")
    out: Path = Field(..., description="Model directory to write (never modified afterwards).")
    l_ce: float = Field(0.6, ge=0, description="Weight of cross-entropy.")
    l_ech: float = Field(0.0, ge=0, description="Weight of the exp-cross-hinge AUC surrogate.")
    l_lds: float = Field(0.4, ge=0, description="Weight of VAT's local distributional smoothness.")
    ech_margin: float = Field(1.0, ge=0, description="Margin xi of exp-cross-hinge.")
    vat_xi: float = Field(1e-6, gt=0, description="VAT finite-difference step.")
    vat_eps: float = Field(1.0, gt=0, description="VAT radius in units of the normalised input.")
    vat_power_iters: int = Field(1, ge=1, le=10, description="VAT power iterations.")

    @model_validator(mode="after")
    def _weights(self):
        if self.l_ce + self.l_ech + self.l_lds <= 0:
            raise ValueError("l_ce + l_ech + l_lds must be > 0")
        if self.mode == "unlabelled" and self.l_lds == 0:
            raise ValueError("mode 'unlabelled' needs l_lds > 0 (unlabelled stamps only enter LDS)")
        return self


class ValidateOptions(FlowOptions):
    model: Path = Field(..., description="Model directory (model.pt2, model.json).")
    dataset: Path = Field(..., description="Dataset directory of a night training never saw (built with --no-inject).")
    tns: Path = Field(..., description="TNS export (search CSV or bulk CSV/Parquet).")
    out: Path = Field(..., description="Validation directory to write.")
    radius_arcsec: float = Field(2.0, gt=0, le=60, description="Crossmatch radius to TNS objects.")
    window_before_days: float = Field(10.0, ge=0, description="Reals: detections from this many days before discovery...")
    window_after_days: float = Field(100.0, ge=0, description="...to this many days after it; TNS objects outside the window are excluded from both classes.")
    operating_point: Path | None = Field(None, description="operating_point.json chosen on another night (default: choose on this one).")
    efficiency: Path | None = Field(None, description="An injected held-out dataset directory for efficiency vs magnitude and host offset.")
    n_boot: int = Field(300, ge=0, le=100000, description="Bootstrap replicates (over objects and images).")
    seed: int = Field(0, ge=0, description="Bootstrap seed.")


class DemoOptions(FlowOptions, ClusterMixin):
    preset: str = Field("ci", description="Survey preset for the demo (ci: minutes on 2 cores; ztf: a ZTF-like demo).")
    out: Path = Field(..., description="Demo directory: survey/ dataset/ stage1/ model/ valnight/ validation/.")
    seed: int = Field(0, ge=0, description="Seed of everything.")
    night: str = Field(DEFAULT_NIGHT, description="Training night; the validation night is the next one.")
    epochs: int = Field(15, ge=1, description="Maximum training epochs of both stages (early stopping, patience 3).")
    network: Literal["simple", "complex"] = Field("simple", description="Network of both stages.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device.")
    efficiency: bool = Field(True, description="Also build the validation night with injections (OUT/effnight) for efficiency vs magnitude and host offset.")

    _night = field_validator("night")(_check_night)


class ScoreAlertsOptions(FlowOptions):
    """Score real alert packets with an exported model; writes the contract CSV (candid, score, error)."""

    model: Path = Field(..., description="Model directory (model.pt2, model.json).")
    alerts: Path = Field(..., description="Alert file or directory: ZTF-like or Rubin Parquet of cut-outs, or Avro packets (*.avro).")
    out: Path = Field(..., description="CSV to write: one row per alert, columns candid, score, error.")
    format: Literal["auto", "ztf-parquet", "rubin-parquet", "avro"] = Field("auto", description="Alert format; auto: from the file's suffix and columns.")
    batch_size: int = Field(1024, ge=1, le=65536, description="Alerts decoded and scored at a time (memory bound).")
    precision: Literal["float32", "bfloat16"] = Field("float32", description="Arithmetic of the convolutions: bfloat16 "
                                                      "(CPU autocast) scores ~1.7x faster, within ~1e-3 of float32.")
    pixel_scale_tolerance: float = Field(0.1, ge=0, le=10, description="Allowed relative difference between the cut-out's and the model's pixel scale; beyond it the row carries pixel_scale_mismatch.")
    model_pixel_scale: float | None = Field(None, gt=0, description="The model's pixel scale in arcsec/px (default: model.json input.pixel_scale_arcsec).")
    alert_pixel_scale: float | None = Field(None, gt=0, description="Force the cut-outs' pixel scale in arcsec/px (default: WCS, PIXSCALE key, or the survey's nominal scale).")


class ExperimentsOptions(FlowOptions):
    """The paper's experiment grid (tasks/experiments.py): cells of (method, label noise, seed),
    trained on the same training nights and scored on the same held-out nights; cached by their
    parameters under OUT/cells/ (a cell JSON with the same key is not rerun)."""

    grid: Literal["quick", "paper", "noise"] = Field("quick", description="Named grid: quick (CI), paper (every row x every noise level), noise (FPR vs label noise).")
    quick: bool = Field(False, description="Shorthand for --grid quick.")
    seeds: list[int] | None = Field(None, description="Seeds (default: the grid's, 0 1 2).")
    methods: list[str] | None = Field(None, description="Only these methods (rows), e.g. simple-all complex-unlabelled-vat rf-sep.")
    noises: list[str] | None = Field(None, description="Only these noise settings: survey, uniform-0.01, tail-0.10, ...")
    train: list[Path] | None = Field(None, description="Training dataset directories (injected nights).")
    heldout: list[Path] | None = Field(None, description="Held-out dataset directories (--no-inject nights training never saw).")
    tns: Path | None = Field(None, description="TNS list for the held-out nights (default: survey/tns.csv beside a --preset build).")
    preset: str | None = Field(None, description="Build the nights from this survey preset into WORK/data/ (instead of --train/--heldout); the issue's full size is 'val'.")
    train_nights: int = Field(2, ge=1, le=30, description="With --preset: injected training nights.")
    heldout_nights: int = Field(1, ge=1, le=30, description="With --preset: --no-inject held-out nights (after the training nights).")
    network: Literal["simple", "complex", "paper"] = Field("simple", description="Network of every CNN row (simple: Simple stands in for Complex on CPU, and a Complex row's cells are named ...__on-simple; paper: each row's own network).")
    stage1_network: Literal["simple", "complex"] = Field("simple", description="Network of the stage-1 folds.")
    folds: int = Field(5, ge=2, le=20, description="Stage-1 folds.")
    epochs: int = Field(8, ge=1, le=1000, description="Maximum epochs per training (early stopping on a validation split).")
    batch_size: int = Field(128, ge=8, le=8192, description="Training batch size.")
    lr: float = Field(1e-3, gt=0, lt=1, description="Learning rate.")
    patience: int = Field(3, ge=1, description="Early-stopping patience (epochs).")
    reference_epochs: int | None = Field(None, ge=1, le=1000, description="Maximum epochs of the reference stage 1 whose scores define the tails of tail-* noise (default: --epochs). Give another run's --epochs to plant that run's tail flips.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device; auto = cuda when present.")
    n_boot: int = Field(300, ge=0, le=100000, description="Cluster-bootstrap replicates per cell.")
    threads: int = Field(1, ge=1, le=64, description="torch CPU threads (1 on shared 2-core machines).")
    rf_trees: int = Field(300, ge=10, le=5000, description="Trees of the random-forest baseline.")
    out: Path = Field(Path("docs/experiments"), description="Where the cell JSONs, held-out scores and the flagging study go.")
    work: Path = Field(Path("runs/experiments"), description="Working directory: derived noisy datasets, stage-1 dirs, models.")
    rerun: bool = Field(False, description="Ignore cached cells and run them again.")
    seed: int = Field(0, ge=0, description="Seed of the --preset simulation and injections.")
    flagger: Literal["cnn", "cnn+rf"] = Field("cnn", description="Whose out-of-fold P(real) flags the stamps of the removed/unlabelled rows: cnn (stage 1's folds, the paper) or cnn+rf (their mean with the feature baseline's on the same folds, the flagging study's cnn+rf). Other than cnn at 0.5 it is part of those cells' keys; give them their own --out.")
    flag_cut: float = Field(0.5, ge=0.5, lt=1.0, description="Flag a stamp when the flagger's P(other class) exceeds this (0.5: the paper's rule; the flagging study's cuts: 0.5-0.99).")
    rescore_from: Path | None = Field(None, description="Train nothing: score the saved models of this OUT's cells (those --methods/--noises/--seeds pick, trained on --train, their models still in their WORK) on --heldout, validated against --tns, into --out (records name their source in rescored_from).")

    @model_validator(mode="after")
    def _inputs(self):
        if self.preset is None and not (self.train and self.heldout and self.tns):
            raise ValueError("give --train, --heldout and --tns, or --preset")
        if self.preset is not None and (self.train or self.heldout):
            raise ValueError("give either --preset or --train/--heldout, not both")
        if self.rescore_from is not None and Path(self.rescore_from).resolve() == Path(self.out).resolve():
            raise ValueError(f"rescore_from: {self.rescore_from} is --out itself; rescored cells go to another OUT")
        return self
