"""Model directory: ``model.pt2`` (torch.export program), ``weights.pt``, ``model.json``.

The program takes raw stamps (B, 3, 29, 29) float32 (normalisation inside) with a dynamic
batch size and returns P(real) (B,) in [0, 1]. TorchScript is deprecated in torch 2.13 and
not used. A model directory is written once (to a temporary sibling, then renamed) and
never modified.
"""

from __future__ import annotations

import contextlib
import copy

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pydantic import BaseModel

from models.networks import ExportWrapper, RBNet, config_from_dict, config_to_dict, network_from_config
from tasks.types import CHANNELS, STAMP_SIZE

FORMAT_VERSION = 1
MAX_BATCH = 1 << 16
_RESERVED = {"format_version", "network", "training", "input", "output", "files", "torch_version"}


def _json_default(o: Any):
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json")
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"meta value of type {type(o).__name__} is not JSON serialisable")


def export_program(model: RBNet, max_batch: int = MAX_BATCH) -> torch.export.ExportedProgram:
    """torch.export of ExportWrapper(model) (eval mode, CPU) with a dynamic batch dim.

    The weights are exported in channels-last memory format (a copy; ``model`` is left as
    it is): oneDNN's NHWC convolutions score ~1.7x the candidates/s of NCHW on this CPU
    (Simple, 2 threads, batch 256: 11,800-13,500/s against 7,350/s in float32, 19,500-24,000/s
    against 8,700/s under bfloat16 autocast; scores equal to 3e-8). Inputs stay (B, 3, 29, 29)
    contiguous float32.
    """
    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)
    wrapper = ExportWrapper(model).eval()
    example = torch.zeros(2, 3, STAMP_SIZE, STAMP_SIZE, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return torch.export.export(wrapper, (example,), dynamic_shapes=({0: batch},))


def export_model(
    model: RBNet, out_dir: str | Path, *, net_config, train_config, meta: dict | None = None
) -> Path:
    """Write a model directory; returns its path. Refuses an existing non-empty out_dir.

    meta: extra JSON-able entries for model.json (dataset and unlabel hashes, version, ...);
    ``pixel_scale`` (arcsec/px) goes into the input spec.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"model directory {out} exists and is not empty (model directories are never modified)")
    meta = dict(meta or {})
    clash = _RESERVED & set(meta)
    if clash:
        raise ValueError(f"meta keys {sorted(clash)} are reserved in model.json")
    model = model.cpu().eval()
    program = export_program(model)
    spec = {
        "format_version": FORMAT_VERSION,
        "network": config_to_dict(net_config),
        "training": train_config,
        "input": {
            "shape": ["B", len(CHANNELS), STAMP_SIZE, STAMP_SIZE],
            "size": STAMP_SIZE,
            "dtype": "float32",
            "channels": list(CHANNELS),
            "values": "raw pixels (ADU); normalisation is inside the model",
            "normalisation": model.normalize.kind,
            "pixel_scale_arcsec": meta.get("pixel_scale"),
        },
        "output": "P(real) in [0, 1], shape (B,)",
        "files": {"program": "model.pt2", "weights": "weights.pt"},
        "torch_version": torch.__version__,
        **meta,
    }
    text = json.dumps(spec, indent=2, sort_keys=True, default=_json_default)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        torch.export.save(program, tmp / "model.pt2")
        torch.save(model.state_dict(), tmp / "weights.pt")
        (tmp / "model.json").write_text(text + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_exported(path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported program as a callable (B, 3, 29, 29) float32 -> (B,); path: a model
    directory or its model.pt2."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.pt2"
    return torch.export.load(p).module()


PRECISIONS = ("float32", "bfloat16")


def score_stamps(program: Callable, stamps: np.ndarray, batch_size: int = 128,
                 precision: str = "float32") -> np.ndarray:
    """P(real) (N,) float64 for raw stamps (N, 3, 29, 29).

    precision ``"bfloat16"`` runs the convolutions and dense layers under CPU autocast
    (bfloat16 matrix units where the CPU has them, e.g. AMX/AVX-512-BF16): ~1.7x the
    candidates/s of float32 on this machine, scores within ~1e-3 of float32
    (``rbflow bench score``, docs/results.md). The input stays float32 and the model's
    normalisation runs in float32 before the first convolution.
    """
    stamps = np.asarray(stamps)
    if stamps.ndim != 4 or stamps.shape[1:] != (len(CHANNELS), STAMP_SIZE, STAMP_SIZE):
        raise ValueError(f"stamps must have shape (N, 3, {STAMP_SIZE}, {STAMP_SIZE}), got {stamps.shape}")
    if batch_size < 1 or batch_size > MAX_BATCH:
        raise ValueError(f"batch_size must be in [1, {MAX_BATCH}], got {batch_size}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out = np.empty(len(stamps), np.float64)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16"
                else contextlib.nullcontext())
    with torch.no_grad(), autocast:
        for b in range(0, len(stamps), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(stamps[b : b + batch_size], dtype=np.float32))
            out[b : b + len(x)] = program(x).double().numpy()
    return out


def read_model_json(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "model.json").read_text())


def load_model(model_dir: str | Path) -> RBNet:
    """Rebuild the eager network from model.json + weights.pt (eval mode, CPU)."""
    spec = read_model_json(model_dir)
    net = network_from_config(config_from_dict(spec["network"]))
    state = torch.load(Path(model_dir) / "weights.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()
