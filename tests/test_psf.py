"""ePSF building, QA and fallback on seeded synthetic star fields."""

import numpy as np
import pytest

from tasks.psf import PSFConfig, PSFError, build_psf, measure_fwhm, psf_qa_figure
from tasks.synthetic import make_star_field
from tasks.types import ImageMeta

META = ImageMeta(exposure="e", sensor="s", night="n", mjd=0.0, gain=2.0, saturation=60000.0)


@pytest.fixture(scope="module")
def field():
    return make_star_field((640, 640), 120, 3.2, seed=11, min_separation=14)


@pytest.fixture(scope="module")
def psf(field):
    return build_psf(field.image, meta=META, config=PSFConfig())


def test_epsf_fwhm_matches_pixel_integrated_input(field, psf):
    true_fwhm, _ = measure_fwhm(field.psf_oversampled, field.oversampling)
    assert psf.method == "epsf"
    assert psf.n_stars >= 50
    assert abs(psf.fwhm_px / true_fwhm - 1) < 0.03
    assert psf.ellipticity < 0.05
    assert psf.residual_rms < 0.05
    # normalised: unit flux renders to total 1 (within the footprint)
    img = psf.render((64, 64), [31.3], [30.8], [1.0])
    assert abs(img.sum() - 1) < 0.01
    yy, xx = np.indices(img.shape)
    assert abs((img * xx).sum() - 31.3) < 0.05 and abs((img * yy).sum() - 30.8) < 0.05


def test_saturated_and_masked_stars_are_not_used(field):
    mask = np.zeros(field.image.shape, bool)
    mask[:, :320] = True
    meta = ImageMeta(exposure="e", sensor="s", night="n", mjd=0.0, gain=2.0,
                     saturation=float(np.nanmax(field.image)) * 0.9)
    r = build_psf(field.image, mask=mask, meta=meta, config=PSFConfig(min_stars=5))
    assert r.star_xy is not None and (r.star_xy[:, 0] > 320 + 12).all()
    # the brightest stars peak above 0.9 * saturation * 0.9: none selected
    bright = field.stars.nlargest(3, "flux")
    d = np.hypot(r.star_xy[:, None, 0] - bright["x"].to_numpy(), r.star_xy[:, None, 1] - bright["y"].to_numpy())
    assert d.min() > 2


def test_fallback_to_moffat_with_few_stars():
    f = make_star_field((200, 200), 4, 3.0, seed=3, min_separation=40, mag_range=(14, 15))
    r = build_psf(f.image, meta=META, config=PSFConfig(min_stars=10, max_stars=20))
    assert r.method == "moffat" and "few_stars" in r.flags
    true_fwhm, _ = measure_fwhm(f.psf_oversampled, f.oversampling)
    assert abs(r.fwhm_px / true_fwhm - 1) < 0.1


def test_seeing_fallback_and_error_when_nothing_works():
    rng = np.random.default_rng(0)
    empty = rng.normal(100, 5, (128, 128)).astype(np.float32)
    meta = ImageMeta(exposure="e", sensor="s", night="n", mjd=0.0, seeing=4.0, pixel_scale=1.25)
    r = build_psf(empty, meta=meta)
    assert r.method == "moffat" and "seeing_fallback" in r.flags
    assert abs(r.fwhm_px - 3.2) < 0.2
    with pytest.raises(PSFError, match="no usable PSF star"):
        build_psf(empty, meta=META)


def test_qa_figure(psf):
    fig = psf_qa_figure(psf)
    assert len(fig.axes) >= 3


def test_config_validation():
    with pytest.raises(ValueError, match="box_size"):
        PSFConfig(box_size=24)
    with pytest.raises(ValueError, match="min_stars"):
        PSFConfig(min_stars=50, max_stars=10)
    with pytest.raises(ValueError, match="oversampling"):
        PSFConfig(oversampling=0)
    with pytest.raises(ValueError, match="extra|nope"):
        PSFConfig(nope=1)
    with pytest.raises(ValueError, match="2-D"):
        build_psf(np.zeros(10))
