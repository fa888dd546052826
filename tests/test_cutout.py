"""Vectorised stamp cutting: centring, edge padding and flags."""

import numpy as np
import pytest

from tasks.cutout import cutouts
from tasks.types import STAMP_SIZE, StampFlag


def _images(shape=(100, 80)):
    base = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape)
    return [base, base + 1e5, -base]


def test_centred_on_rounded_position_and_channels():
    ims = _images()
    c = cutouts(ims, [40.2, 30.6], [50.4, 20.5])
    assert c.stamps.shape == (2, 3, STAMP_SIZE, STAMP_SIZE) and c.stamps.dtype == np.float32
    assert c.flags.dtype == np.int32 and (c.flags == 0).all()
    assert np.array_equal(c.stamps[0, 0], ims[0][36:65, 26:55])
    assert c.stamps[1, 0, 14, 14] == ims[0][21, 31]  # 20.5 rounds to 21, 30.6 to 31
    assert np.array_equal(c.stamps[0, 1], ims[1][36:65, 26:55])
    assert np.array_equal(c.stamps[0, 2], ims[2][36:65, 26:55])


def test_edge_padding_and_flag():
    ims = _images()
    c = cutouts(ims, [0.0, 79.0, 5.0, -30.0], [0.0, 99.0, 50.0, 50.0])
    assert (c.flags[:3] & StampFlag.EDGE).all()
    s = c.stamps[0, 0]
    assert (s[:14, :] == 0).all() and (s[:, :14] == 0).all()
    assert np.array_equal(s[14:, 14:], ims[0][:15, :15])
    s = c.stamps[1, 0]
    assert np.array_equal(s[:15, :15], ims[0][85:, 65:]) and (s[15:, :] == 0).all()
    assert np.array_equal(c.stamps[2, 0][:, 9:], ims[0][36:65, :20])
    assert (c.stamps[3] == 0).all() and c.flags[3] & StampFlag.EDGE  # entirely outside


def test_mask_nan_and_saturation_flags():
    new, ref, sub = _images()
    new = new.copy()
    new[10, 10] = np.nan
    mask = np.zeros(new.shape, bool)
    mask[60:70, 60:70] = True
    c = cutouts([new, ref, sub], [12.0, 40.0, 50.0, 64.0], [14.0, 50.0, 80.0, 65.0],
                masks=[None, mask, None], saturation=[7000.0, None, None])
    assert c.flags[0] & StampFlag.NEAR_MASK and c.stamps[0, 0, 10, 12] == 0  # NaN -> 0
    assert not c.flags[1] & StampFlag.NEAR_MASK
    assert c.flags[2] & StampFlag.NEAR_MASK  # the masked block is within 14 px
    assert (c.stamps[3, 1][9:19, 10:20] == 0).all()  # masked ref pixels zeroed
    assert c.stamps[3, 0, 14, 14] == new[65, 64]  # other channels untouched
    # saturation is checked on new only here: rows >= 88 reach 7000
    assert c.flags[2] & StampFlag.SATURATED and not c.flags[1] & StampFlag.SATURATED


def test_validation():
    ims = _images()
    with pytest.raises(ValueError, match="size"):
        cutouts(ims, [1.0], [1.0], size=28)
    with pytest.raises(ValueError, match="one shape"):
        cutouts([ims[0], ims[1][:50]], [1.0], [1.0])
    with pytest.raises(ValueError, match="masks"):
        cutouts(ims, [1.0], [1.0], masks=[None])
    with pytest.raises(ValueError, match="finite"):
        cutouts(ims, [np.nan], [1.0])
    empty = cutouts(ims, [], [])
    assert empty.stamps.shape == (0, 3, 29, 29)
