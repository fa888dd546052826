"""Seeded synthetic star fields for tests (in the spirit of photutils' ``make_psf_model_image``).

Stars are drawn with galsim (Moffat or Gaussian convolved with the 1-px pixel response) into
an image in pixel units (``scale=1.0``), on a flat sky, then Poisson (in electrons) and
Gaussian read noise are added. Coordinates are 0-based (x = column, y = row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import galsim
import numpy as np
import pandas as pd

MOFFAT_BETA = 3.5


@dataclass(frozen=True)
class SyntheticImage:
    """A synthetic sensor image and its truth.

    image: (ny, nx) float32 ADU, sky included, noisy.
    model: (ny, nx) float32 ADU, the noiseless expectation (sky + stars).
    variance: (ny, nx) float32 ADU^2, expected per-pixel variance of ``image``.
    stars: DataFrame with x, y, flux (ADU, total), mag (zeropoint 25).
    psf_oversampled: (k*os, k*os) float64, the pixel-integrated PSF sampled at 1/os px,
        normalised so that its sum is os**2 (sum over native pixels = 1), centred.
    oversampling: the factor ``os`` of ``psf_oversampled``.
    fwhm: the input (un-pixelated) PSF FWHM in px.
    mask: (ny, nx) bool, True on the NaN block (if any).
    """

    image: np.ndarray
    model: np.ndarray
    variance: np.ndarray
    stars: pd.DataFrame
    psf_oversampled: np.ndarray
    oversampling: int
    fwhm: float
    mask: np.ndarray


def psf_profile(fwhm: float, psf: Literal["moffat", "gaussian"] = "moffat") -> galsim.GSObject:
    """The galsim surface-brightness profile (unit flux) used by :func:`make_star_field`."""
    if psf == "moffat":
        return galsim.Moffat(beta=MOFFAT_BETA, fwhm=fwhm)
    if psf == "gaussian":
        return galsim.Gaussian(fwhm=fwhm)
    raise ValueError(f"psf must be 'moffat' or 'gaussian', got {psf!r}")


def pixel_integrated_psf(fwhm: float, psf: str = "moffat", oversampling: int = 4,
                         size: int = 25) -> np.ndarray:
    """The effective (pixel-integrated) PSF on a grid oversampled ``oversampling`` times.

    Returns a (size*os+1, size*os+1) array (odd, centred), sum = os**2.
    """
    prof = galsim.Convolve(psf_profile(fwhm, psf), galsim.Pixel(1.0))
    n = size * oversampling + 1
    img = prof.drawImage(nx=n, ny=n, scale=1.0 / oversampling, method="no_pixel")
    return img.array.astype(np.float64) * oversampling**2 / img.array.sum()


def make_star_field(
    shape: tuple[int, int],
    n_stars: int,
    fwhm: float,
    seed: int,
    *,
    sky: float = 200.0,
    gain: float = 2.0,
    read_noise: float = 5.0,
    psf: Literal["moffat", "gaussian"] = "moffat",
    mag_range: tuple[float, float] = (14.0, 19.0),
    zeropoint: float = 25.0,
    min_separation: float = 0.0,
    edge: int = 5,
    nan_block: tuple[slice, slice] | None = None,
    saturation: float | None = None,
) -> SyntheticImage:
    """Draw ``n_stars`` point sources with a constant PSF on a flat sky.

    Magnitudes are uniform in ``mag_range`` (flux = 10**(-0.4 (mag - zeropoint)) ADU);
    positions uniform, at least ``edge`` px from the borders and, if ``min_separation`` > 0,
    at least that far from each other (rejection sampling). ``nan_block`` = (rows, cols)
    slices set to NaN in ``image`` (and True in ``mask``). ``saturation`` clips the image.
    """
    ny, nx = shape
    if n_stars < 0:
        raise ValueError(f"n_stars must be >= 0, got {n_stars}")
    if fwhm <= 0:
        raise ValueError(f"fwhm must be > 0, got {fwhm}")
    if gain <= 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    rng = np.random.default_rng(seed)
    xs: list[float] = []
    ys: list[float] = []
    tries = 0
    while len(xs) < n_stars and tries < 200 * max(n_stars, 1):
        tries += 1
        x = rng.uniform(edge, nx - 1 - edge)
        y = rng.uniform(edge, ny - 1 - edge)
        if min_separation > 0 and xs:
            d2 = (np.asarray(xs) - x) ** 2 + (np.asarray(ys) - y) ** 2
            if d2.min() < min_separation**2:
                continue
        xs.append(x)
        ys.append(y)
    mags = rng.uniform(*mag_range, size=len(xs))
    fluxes = 10 ** (-0.4 * (mags - zeropoint))

    full = galsim.ImageF(nx, ny, scale=1.0)  # galsim pixel (i+1, j+1) = numpy [j, i]
    base = psf_profile(fwhm, psf)
    half = int(np.ceil(8 * fwhm))
    for x, y, f in zip(xs, ys, fluxes):
        ix, iy = int(round(x)), int(round(y))
        b = galsim.BoundsI(ix - half + 1, ix + half + 1, iy - half + 1, iy + half + 1) & full.bounds
        base.withFlux(float(f)).drawImage(
            image=full[b], center=galsim.PositionD(x + 1.0, y + 1.0), add_to_image=True,
            method="auto")
    model = full.array.astype(np.float64) + sky
    variance = model / gain + (read_noise / gain) ** 2
    noise_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    image = noise_rng.poisson(np.clip(model, 0, None) * gain) / gain
    image = image + noise_rng.normal(0.0, read_noise / gain, size=shape)
    if saturation is not None:
        image = np.minimum(image, saturation)
    mask = np.zeros(shape, bool)
    if nan_block is not None:
        mask[nan_block] = True
        image[mask] = np.nan
    stars = pd.DataFrame({"x": np.asarray(xs, float), "y": np.asarray(ys, float),
                          "flux": fluxes, "mag": mags})
    return SyntheticImage(
        image=image.astype(np.float32), model=model.astype(np.float32),
        variance=variance.astype(np.float32), stars=stars,
        psf_oversampled=pixel_integrated_psf(fwhm, psf, 4), oversampling=4, fwhm=float(fwhm),
        mask=mask)
