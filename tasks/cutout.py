"""Vectorised 29 x 29 cut-outs of (new, ref, sub) around detections.

Stamps are centred on the rounded detection position (ix = floor(x + 0.5)); the part outside
the image is padded with 0 and flagged EDGE; masked or non-finite pixels are set to 0 and
flag NEAR_MASK; pixels at or above the saturation level of new or ref flag SATURATED.
No Python loop per stamp: a zero-padded copy of each image is indexed with
``sliding_window_view`` and per-stamp "any bad pixel" comes from a summed-area table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tasks.types import STAMP_SIZE, StampFlag


@dataclass(frozen=True)
class Cutouts:
    """stamps: (n, c, size, size) float32 (c = number of images, 3 for new/ref/sub);
    flags: (n,) int32 StampFlag bits (EDGE, NEAR_MASK, SATURATED)."""

    stamps: np.ndarray
    flags: np.ndarray


def _box_count(bad: np.ndarray, iy: np.ndarray, ix: np.ndarray, h: int) -> np.ndarray:
    """Number of True pixels of ``bad`` in the (2h+1)^2 box at (iy, ix), clipped to the image."""
    ny, nx = bad.shape
    sat = np.zeros((ny + 1, nx + 1), np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(bad, 0, dtype=np.int64), 1)
    y0, y1 = np.clip(iy - h, 0, ny), np.clip(iy + h + 1, 0, ny)
    x0, x1 = np.clip(ix - h, 0, nx), np.clip(ix + h + 1, 0, nx)
    return sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]


def cutouts(images: Sequence[np.ndarray], x, y, *, size: int = STAMP_SIZE,
            masks: Sequence[np.ndarray | None] | None = None,
            saturation: Sequence[float | None] | None = None,
            saturation_channels: Sequence[int] = (0, 1)) -> Cutouts:
    """Cut (n, len(images), size, size) float32 stamps at 0-based (x, y) (n,).

    images: equal-shape (ny, nx) arrays (new, ref, sub). masks: per image, bool (ny, nx) or
    None (True = bad). saturation: per image, level in ADU or None; only the channels in
    ``saturation_channels`` (default new and ref) are checked.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size}")
    if len(images) == 0:
        raise ValueError("images must hold at least one image")
    shape = np.shape(images[0])
    if len(shape) != 2 or any(np.shape(im) != shape for im in images):
        raise ValueError(f"images must be 2-D and of one shape, got {[np.shape(i) for i in images]}")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"masks must have one entry per image ({len(images)}), got {len(masks)}")
    if saturation is not None and len(saturation) != len(images):
        raise ValueError(
            f"saturation must have one entry per image ({len(images)}), got {len(saturation)}")
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite")
    n, c, h = len(x), len(images), size // 2
    ny, nx = shape
    ix = np.floor(x + 0.5).astype(np.int64)
    iy = np.floor(y + 0.5).astype(np.int64)
    stamps = np.zeros((n, c, size, size), np.float32)
    flags = np.zeros(n, np.int32)
    edge = (ix - h < 0) | (iy - h < 0) | (ix + h >= nx) | (iy + h >= ny)
    flags[edge] |= int(StampFlag.EDGE)
    # positions whose stamp misses the image entirely stay all-zero (and EDGE)
    far = (ix + h < 0) | (iy + h < 0) | (ix - h >= nx) | (iy - h >= ny)
    # with a pad of 2h the window starting at padded (iy + h, ix + h) is centred on image
    # (iy, ix); valid for centres within h px outside the image
    wy = np.clip(iy, -h, ny - 1 + h) + h
    wx = np.clip(ix, -h, nx - 1 + h) + h
    any_bad = np.zeros(n, bool)
    any_sat = np.zeros(n, bool)
    for k, im in enumerate(images):
        im = np.asarray(im, np.float32)
        bad = ~np.isfinite(im)
        if masks is not None and masks[k] is not None:
            if np.shape(masks[k]) != shape:
                raise ValueError(f"masks[{k}] shape {np.shape(masks[k])} != image shape {shape}")
            bad |= np.asarray(masks[k], bool)
        clean = np.where(bad, np.float32(0), im)
        win = sliding_window_view(np.pad(clean, 2 * h), (size, size))  # (ny+2h, nx+2h, s, s)
        stamps[:, k] = win[wy, wx]
        if bad.any():
            any_bad |= _box_count(bad, iy, ix, h) > 0
        if (saturation is not None and saturation[k] is not None
                and k in saturation_channels and np.isfinite(saturation[k])):
            any_sat |= _box_count(clean >= saturation[k], iy, ix, h) > 0
    stamps[far] = 0.0
    flags[any_bad] |= int(StampFlag.NEAR_MASK)
    flags[any_sat] |= int(StampFlag.SATURATED)
    return Cutouts(stamps=stamps, flags=flags)
