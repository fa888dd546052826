"""Per-sensor PSF: photutils ePSF from automatically selected stars, with an analytic fallback.

Star selection (all on the background-subtracted image, sep Background + sep.extract at
``detect_thresh`` sigma):

* sep extraction flag == 0 (not blended, not truncated);
* S/N of a circular aperture (radius ``aper_radius`` px, sep.sum_circle) >= ``min_snr``;
* unsaturated: peak + background < ``saturation_fraction`` * ``meta.saturation``;
* off edges: the whole ``box_size`` cut-out lies inside the image;
* off masks: no masked / non-finite pixel in the cut-out;
* isolated: no other sep detection within ``isolation_px``;
* point-like: elongation a/b <= ``max_elongation`` and size sqrt(a b) <= ``size_clip`` x the
  median of the candidates (rejects galaxies and cosmic rays' odd shapes).

The brightest ``max_stars`` survivors go to ``photutils.psf.EPSFBuilder``. With fewer than
``min_stars`` survivors the *fallback* is used: an astropy ``Moffat2D`` is fitted to each of
the (up to 5) brightest stars that pass a relaxed selection (no isolation / shape cut), the
median parameters define the PSF (method='moffat'); with no usable star at all, a Moffat of
``meta.seeing`` FWHM and ``fallback_beta`` is used. Only when neither is possible is
:class:`PSFError` raised. The caller sets ``StampFlag.PSF_FALLBACK`` when method != 'epsf'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sep
from astropy.modeling import fitting, models
from astropy.nddata import NDData
from astropy.table import Table
from photutils.psf import EPSFBuilder, ImagePSF, extract_stars

from tasks.config import PSFConfig  # defined there, kept importable from here
from tasks.types import ImageMeta


class PSFError(ValueError):
    """No PSF could be determined for an image (not even the analytic fallback)."""


@dataclass(frozen=True)
class PSFResult:
    """A sensor's PSF.

    epsf: (m, m) float64 oversampled effective (pixel-integrated) PSF, m odd, centred,
        normalised so that sum over native pixels is 1 (i.e. sum(epsf) = oversampling**2).
    oversampling: int. fwhm_px / ellipticity: measured on the half-maximum isophote.
    n_stars: stars used. residual_rms: median over stars of rms(star - model) / star peak.
    method: 'epsf' or 'moffat'. flags: tuple of QA notes (e.g. 'few_stars', 'not_converged').
    residual: (k, k) median normalised residual (star - model) / flux, or None.
    """

    epsf: np.ndarray
    oversampling: int
    fwhm_px: float
    ellipticity: float
    n_stars: int
    residual_rms: float
    method: str
    flags: tuple[str, ...] = ()
    residual: np.ndarray | None = None
    star_xy: np.ndarray | None = None  # (n_stars, 2) positions of the stars used
    _model: ImagePSF | None = field(default=None, repr=False, compare=False)

    @property
    def model(self) -> ImagePSF:
        """The photutils ImagePSF (unit flux, centred at 0, 0)."""
        if self._model is not None:
            return self._model
        return _image_psf(self.epsf, self.oversampling)

    @property
    def half_size(self) -> int:
        """Half width (native px) of the rendering footprint."""
        return (self.epsf.shape[0] // self.oversampling) // 2

    @property
    def n_eff(self) -> float:
        """Effective number of pixels 1 / sum(p^2) of a centred point source (noise area)."""
        h = self.half_size
        g = np.arange(-h, h + 1, dtype=float)
        gx, gy = np.meshgrid(g, g)
        p = self.model.evaluate(gx, gy, 1.0, 0.0, 0.0)
        return float(1.0 / np.sum(p**2))

    def footprints(self, x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit-flux pixel footprints of point sources at (x, y) (0-based, sub-pixel).

        Returns (boxes (n, k, k), x0 (n,), y0 (n,)) where box i covers image pixels
        [y0_i : y0_i + k, x0_i : x0_i + k] (may extend outside the image), k = 2 half_size + 1.
        """
        x = np.atleast_1d(np.asarray(x, float))
        y = np.atleast_1d(np.asarray(y, float))
        h = self.half_size
        ix = np.floor(x + 0.5).astype(np.int64)
        iy = np.floor(y + 0.5).astype(np.int64)
        g = np.arange(-h, h + 1)
        dx = (ix[:, None, None] + g[None, None, :]) - x[:, None, None]
        dy = (iy[:, None, None] + g[None, :, None]) - y[:, None, None]
        dx, dy = np.broadcast_arrays(dx, dy)
        boxes = self.model.evaluate(dx, dy, 1.0, 0.0, 0.0).reshape(dx.shape)
        return boxes, ix - h, iy - h

    def render(self, shape: tuple[int, int], x, y, flux) -> np.ndarray:
        """Image (shape) float64 of point sources of total ``flux`` at sub-pixel (x, y)."""
        boxes, x0, y0 = self.footprints(x, y)
        boxes = boxes * np.atleast_1d(np.asarray(flux, float))[:, None, None]
        return scatter_boxes(shape, boxes, x0, y0)


def scatter_boxes(shape, boxes: np.ndarray, x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
    """Add (n, k, k) boxes into a zero image of ``shape`` at corners (x0, y0), clipping."""
    out = np.zeros(shape, np.float64)
    n, k, _ = boxes.shape
    if n == 0:
        return out
    g = np.arange(k)
    yy = y0[:, None, None] + g[None, :, None]
    xx = x0[:, None, None] + g[None, None, :]
    yy, xx = np.broadcast_arrays(yy, xx)
    ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
    np.add.at(out, (yy[ok], xx[ok]), boxes[ok])
    return out


class _Builder(EPSFBuilder):
    """EPSFBuilder whose oversampled cells without any star sample get a zero residual.

    Such cells (typically a corner of the grid, reached only by stars of one sub-pixel phase)
    make photutils 3.0 fill them by a Clough-Tocher fit over the whole grid: measured 3.6 s
    per iteration on 42 stars at oversampling 2 (18 s per sensor) versus 0.2 s with this.
    A zero residual keeps the previous value there (0 at the start): the grid's corner,
    far in the wings.
    """

    def _resample_residuals(self, stars, epsf):
        res = super()._resample_residuals(stars, epsf)
        if len(res):
            empty = ~np.isfinite(res).any(axis=0)
            if empty.any():
                res[0][empty] = 0.0
        return res


def _image_psf(epsf: np.ndarray, oversampling: int) -> ImagePSF:
    return ImagePSF(epsf, oversampling=oversampling, fill_value=0.0)


def measure_fwhm(epsf: np.ndarray, oversampling: int, step: float = 0.05) -> tuple[float, float]:
    """FWHM (px) and ellipticity 1 - b/a of an oversampled PSF from its half-max isophote.

    The PSF is interpolated (photutils ImagePSF) on a ``step``-px grid; FWHM = 2 sqrt(A / pi)
    with A the area above half the peak, and b/a from the eigenvalues of the second moments
    of that area. Model-free: photutils' ``fit_fwhm`` fits a Gaussian, which for a Moffat
    (beta 3.5) profile is biased by several per cent, more than the 3 % this must resolve.
    """
    model = _image_psf(epsf, oversampling)
    h = (epsf.shape[0] // oversampling) / 2.0
    g = np.arange(-h, h + step / 2, step)
    gx, gy = np.meshgrid(g, g)
    v = model.evaluate(gx, gy, 1.0, 0.0, 0.0)
    inside = v >= 0.5 * v.max()
    area = inside.sum() * step**2
    fwhm = 2.0 * np.sqrt(area / np.pi)
    px, py = gx[inside], gy[inside]
    cov = np.cov(np.vstack([px, py]))
    ev = np.sort(np.linalg.eigvalsh(cov))
    ell = 1.0 - np.sqrt(max(ev[0], 0.0) / ev[1]) if ev[1] > 0 else 0.0
    return float(fwhm), float(ell)


def _moffat_epsf(fwhm: float, beta: float, oversampling: int, size: int) -> np.ndarray:
    """Pixel-integrated Moffat (galsim) sampled at 1/oversampling px, sum = os**2."""
    import galsim

    prof = galsim.Convolve(galsim.Moffat(beta=beta, fwhm=fwhm), galsim.Pixel(1.0))
    n = size * oversampling + 1
    img = prof.drawImage(nx=n, ny=n, scale=1.0 / oversampling, method="no_pixel").array
    return img.astype(np.float64) * oversampling**2 / img.sum()


def _fit_moffat(data: np.ndarray, oversampling: int, size: int) -> np.ndarray | None:
    """Fit astropy Moffat2D to cut-outs (list of (k, k)) -> oversampled effective PSF."""
    fitter = fitting.TRFLSQFitter()
    params = []
    for d in data:
        k = d.shape[0]
        yy, xx = np.mgrid[:k, :k]
        m0 = models.Moffat2D(amplitude=d.max(), x_0=k // 2, y_0=k // 2, gamma=2.0, alpha=3.0)
        m0.alpha.bounds = (1.2, 20.0)
        m0.gamma.bounds = (0.3, k)
        try:
            fit = fitter(m0, xx, yy, d)
        except Exception:  # noqa: BLE001 - a failed fit just drops the star
            continue
        if np.isfinite(fit.gamma.value) and np.isfinite(fit.alpha.value) and fit.gamma > 0:
            params.append((abs(fit.gamma.value), fit.alpha.value))
    if not params:
        return None
    gamma, alpha = np.median(np.asarray(params), axis=0)
    n = size * oversampling + 1
    g = (np.arange(n) - n // 2) / oversampling
    gx, gy = np.meshgrid(g, g)
    img = models.Moffat2D(1.0, 0.0, 0.0, gamma, alpha)(gx, gy)
    return img * oversampling**2 / img.sum()


def _select_stars(data, bad, rms, level, meta, config, relaxed=False):
    """Candidate PSF stars: structured sep rows passing the cuts (sorted bright first)."""
    objs = sep.extract(data, config.detect_thresh, err=rms, mask=bad, minarea=5)
    if len(objs) == 0:
        return objs
    ny, nx = data.shape
    half = config.box_size // 2
    flux, fluxerr, _ = sep.sum_circle(data, objs["x"], objs["y"], config.aper_radius,
                                      err=rms, mask=bad, gain=meta.gain)
    snr = flux / np.maximum(fluxerr, 1e-30)
    x, y = objs["x"], objs["y"]
    ix, iy = np.floor(x + 0.5).astype(int), np.floor(y + 0.5).astype(int)
    ok = (objs["flag"] == 0) & (snr >= config.min_snr)
    ok &= (ix - half >= 0) & (ix + half < nx) & (iy - half >= 0) & (iy + half < ny)
    bkg_peak = objs["peak"]
    if np.isfinite(meta.saturation):
        # peak is on the background-subtracted image; compare the raw level
        ok &= (bkg_peak + level) < config.saturation_fraction * meta.saturation
    # off masks: no bad pixel in the box (summed-area table)
    sat = np.pad(np.cumsum(np.cumsum(bad, 0), 1), ((1, 0), (1, 0)))
    y0, y1 = np.clip(iy - half, 0, ny), np.clip(iy + half + 1, 0, ny)
    x0, x1 = np.clip(ix - half, 0, nx), np.clip(ix + half + 1, 0, nx)
    nbad = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    ok &= nbad == 0
    if not relaxed:
        from scipy.spatial import cKDTree

        tree = cKDTree(np.column_stack([x, y]))
        cnt = np.array([len(n) for n in tree.query_ball_point(
            np.column_stack([x, y]), config.isolation_px)])
        ok &= cnt == 1
        elong = objs["a"] / np.maximum(objs["b"], 1e-6)
        ok &= elong <= config.max_elongation
        size = np.sqrt(objs["a"] * objs["b"])
        if ok.any():
            ok &= size <= config.size_clip * np.median(size[ok])
    sel = objs[ok]
    order = np.argsort(-snr[ok], kind="stable")
    return sel[order]


def build_psf(image: np.ndarray, *, mask: np.ndarray | None = None,
              meta: ImageMeta | None = None, config: PSFConfig = PSFConfig()) -> PSFResult:
    """Build the PSF of one sensor image.

    image: (ny, nx) ADU, sky included (a sep background is subtracted here); NaN allowed.
    mask: (ny, nx) bool, True = bad. meta: gain / saturation / seeing / pixel_scale.
    Returns a :class:`PSFResult`; raises :class:`PSFError` when no PSF can be made.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    meta = meta or ImageMeta(exposure="", sensor="", night="", mjd=0.0)
    bad = ~np.isfinite(image)
    if mask is not None:
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} != image shape {image.shape}")
        bad |= mask.astype(bool)
    if bad.all():
        raise PSFError("image has no valid pixel")
    data = np.where(bad, 0.0, image).astype(np.float64)
    bkg = sep.Background(data, mask=bad)
    level = float(bkg.globalback)
    data = data - bkg.back()
    data[bad] = 0.0
    rms = bkg.rms()
    os_ = config.oversampling
    stars = _select_stars(data, bad, rms, level, meta, config)
    flags: list[str] = []
    half = config.box_size // 2
    if len(stars) >= config.min_stars:
        stars = stars[: config.max_stars]
        # every oversampled cell needs samples: photutils interpolates empty cells with a
        # Clough-Tocher fit over the whole grid, seconds per iteration (measured: 18 stars at
        # os 3 -> 30 s, 75 stars -> 1 s), and the ePSF is noisy there anyway
        os_ = int(min(os_, max(1, np.floor(np.sqrt(len(stars) / config.stars_per_phase)))))
        if os_ < config.oversampling:
            flags.append("oversampling_reduced")
        tab = Table({"x": stars["x"], "y": stars["y"]})
        cut = extract_stars(NDData(data), tab, size=config.box_size)
        builder = _Builder(oversampling=os_, maxiters=config.maxiters, progress_bar=False,
                           smoothing_kernel=config.smoothing_kernel)
        res = builder(cut)
        if not res.converged:
            flags.append("not_converged")
        epsf_img = np.asarray(res.epsf.data, np.float64)
        epsf_img = epsf_img * os_**2 / epsf_img.sum()
        model = _image_psf(epsf_img, os_)
        resid, rr = [], []
        for s in res.fitted_stars.all_good_stars:
            r = s.compute_residual_image(model)
            resid.append(r / s.flux)
            rr.append(np.sqrt(np.mean(r**2)) / max(s.data.max(), 1e-30))
        fwhm, ell = measure_fwhm(epsf_img, os_)
        return PSFResult(
            epsf=epsf_img, oversampling=os_, fwhm_px=fwhm, ellipticity=ell,
            n_stars=len(cut.all_good_stars), residual_rms=float(np.median(rr)),
            method="epsf", flags=tuple(flags),
            residual=np.median(np.asarray(resid), axis=0) if resid else None,
            star_xy=np.column_stack([stars["x"], stars["y"]]), _model=model)

    # --- fallback: analytic Moffat ---
    flags.append("few_stars")
    relaxed = _select_stars(data, bad, rms, level, meta, config, relaxed=True)[:5]
    epsf_img = None
    if len(relaxed):
        cuts = [data[int(round(o["y"])) - half: int(round(o["y"])) + half + 1,
                     int(round(o["x"])) - half: int(round(o["x"])) + half + 1] for o in relaxed]
        epsf_img = _fit_moffat(cuts, os_, config.box_size)
    if epsf_img is None:
        if meta.seeing is None or not np.isfinite(meta.seeing) or meta.seeing <= 0:
            raise PSFError(
                f"no usable PSF star ({len(stars)} selected, min_stars={config.min_stars}) "
                "and no seeing in the image metadata for the Moffat fallback")
        flags.append("seeing_fallback")
        epsf_img = _moffat_epsf(meta.seeing / meta.pixel_scale, config.fallback_beta, os_,
                                config.box_size)
    fwhm, ell = measure_fwhm(epsf_img, os_)
    return PSFResult(
        epsf=epsf_img, oversampling=os_, fwhm_px=fwhm, ellipticity=ell,
        n_stars=int(len(relaxed)), residual_rms=float("nan"), method="moffat",
        flags=tuple(flags), residual=None,
        star_xy=np.column_stack([relaxed["x"], relaxed["y"]]) if len(relaxed) else None,
        _model=_image_psf(epsf_img, os_))


def psf_qa_figure(result: PSFResult):
    """Matplotlib Figure: ePSF image (log), radial profile, and median residual."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.4))
    axs = fig.subplots(1, 3)
    e = result.epsf
    os_ = result.oversampling
    ext = np.array([-0.5, 0.5, -0.5, 0.5]) * e.shape[0] / os_
    axs[0].imshow(np.log10(np.clip(e / e.max(), 1e-4, None)), origin="lower", extent=ext)
    axs[0].set_title(f"{result.method}: FWHM {result.fwhm_px:.2f} px, e={result.ellipticity:.2f}")
    c = (np.asarray(e.shape) - 1) / 2
    yy, xx = np.indices(e.shape)
    r = np.hypot(xx - c[1], yy - c[0]).ravel() / os_
    axs[1].semilogy(r, np.clip(e.ravel() / e.max(), 1e-5, None), ",", alpha=0.5)
    axs[1].axvline(result.fwhm_px / 2, color="r", lw=0.8)
    axs[1].set_xlabel("radius (px)")
    axs[1].set_title(f"radial profile ({result.n_stars} stars)")
    if result.residual is not None:
        v = np.nanmax(np.abs(result.residual)) or 1.0
        im = axs[2].imshow(result.residual, origin="lower", cmap="RdBu_r", vmin=-v, vmax=v)
        fig.colorbar(im, ax=axs[2])
        axs[2].set_title(f"median residual/flux (rms {result.residual_rms:.3f})")
    else:
        axs[2].text(0.5, 0.5, "no residual (fallback)", ha="center", va="center")
        axs[2].set_axis_off()
    fig.tight_layout()
    return fig
