"""Bad input, one sensor image at a time (issue 13, item 1): each case is a clear, recorded
error naming the file, the sensor and the problem, and nothing is written for that sensor.

The matrix runs ``storage.sensor_io.run_sensor_job`` (what the build flow's task calls) on
one copied sensor image of a tiny simulated survey (192x192 px), so that a case takes well
under a second. The flow-level proof (bad sensors skipped, listed in the summary, the rest
completed) is ``tests/test_reliability_flow.py::test_bad_sensors_are_skipped_and_listed``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from flows.build import sensor_config_json
from storage.sensor_io import SensorJob, jobs_from_manifest, run_sensor_job
from storage.stampstore import read_ledger
from storage.survey import read_manifest
from tasks.types import StampFlag

pytestmark = pytest.mark.reliability

NIGHT = "2026-01-05"


def make_tiny_survey(out: Path, n_sensors: int = 2) -> Path:
    """1 field x ``n_sensors`` x 2 visits of 192x192 px (dense stars: an ePSF on every image)."""
    from storage.survey import simulate_survey
    from tasks.simulate import get_preset
    cfg = get_preset("ci").model_copy(update={"n_fields": 1, "n_sensors": n_sensors, "nx": 192, "ny": 192,
                                              "star_density": 20000.0})
    simulate_survey(cfg, NIGHT, 0, out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_survey(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def job(tiny, tmp_path) -> SensorJob:
    """The first sensor image's job, its new, ref and catalogue copied into tmp_path/in/."""
    j = jobs_from_manifest(tiny / "manifest.csv", tmp_path / "ds", night=NIGHT, inject=True, seed=0, tns=None,
                           config_json=sensor_config_json(None))[0]
    src = tmp_path / "in"
    src.mkdir()
    paths = {}
    for name in ("new", "ref", "catalog"):
        p = src / (name + Path(getattr(j, name)).suffix)
        shutil.copy(getattr(j, name), p)
        paths[name] = str(p)
    return dataclasses.replace(j, survey_dir=None, **paths)


# ------------------------------------------------------------------ ways to break one input
def _rewrite(path: str, data=None, header=None) -> None:
    with fits.open(path) as h:
        d, hdr = h[0].data.astype(np.float32), h[0].header.copy()
    if data is not None:
        d = data(d)
    if header is not None:
        header(hdr)
    fits.PrimaryHDU(d, hdr).writeto(path, overwrite=True)


def _set_card(path: str, key: str, value: int) -> None:
    """Overwrite one header card in place (keeps the data bytes as they are)."""
    raw = bytearray(Path(path).read_bytes())
    i = raw.find(key.ljust(8).encode() + b"=")
    raw[i:i + 80] = f"{key:8}= {value:>20}".ljust(80).encode()
    Path(path).write_bytes(bytes(raw))


def _truncate(j):
    p = Path(j.new)
    p.write_bytes(p.read_bytes()[:20000])


def _drop_wcs(h):
    for k in [k for k in h if k.startswith(("CTYPE", "CRVAL", "CRPIX", "CD", "CDELT", "PC", "CUNIT"))]:
        del h[k]


def _catalogue_without_mag(j):
    pd.read_parquet(j.catalog).drop(columns=["mag"]).to_parquet(j.catalog)


def _noise(d):
    return np.random.default_rng(0).normal(300.0, 10.0, d.shape).astype(np.float32)


# id: (how to break the job's files, which file the error must name, what it must say)
CASES = {
    "truncated_fits": (_truncate, "new", r"truncated: the header .* needs 147456 data bytes"),
    "empty_file": (lambda j: Path(j.new).write_bytes(b""), "new", r"unreadable or truncated FITS"),
    "wrong_bitpix": (lambda j: _set_card(j.new, "BITPIX", 16), "new", r"wrong BITPIX or NAXISn.*BITPIX = 16"),
    "invalid_bitpix": (lambda j: _set_card(j.new, "BITPIX", 12), "new", r"invalid BITPIX = 12"),
    "all_nan_new": (lambda j: _rewrite(j.new, data=lambda d: np.full_like(d, np.nan)), "new",
                    r"new image: every pixel is NaN or infinite"),
    "all_nan_ref": (lambda j: _rewrite(j.ref, data=lambda d: np.full_like(d, np.inf)), "ref",
                    r"reference: every pixel is NaN or infinite"),
    "missing_wcs": (lambda j: _rewrite(j.new, header=_drop_wcs), "new", r"new image WCS: no celestial WCS"),
    "broken_wcs": (lambda j: _rewrite(j.ref, header=lambda h: h.update(CTYPE1="RA---XYZ", CTYPE2="DEC--XYZ")),
                   "ref", r"reference WCS: invalid WCS .*XYZ"),
    "singular_wcs": (lambda j: _rewrite(j.new, header=lambda h: h.update(CDELT1=0.0)), "new",
                     r"new image WCS: invalid WCS .*singular"),
    "ref_does_not_overlap": (lambda j: _rewrite(j.ref, header=lambda h: h.update(CRVAL1=h["CRVAL1"] + 5.0)),
                             "ref", r"reference does not overlap the new image .*new\.fits on the sky"),
    "too_few_stars_no_seeing": (lambda j: _rewrite(j.new, data=_noise, header=lambda h: h.remove("SEEING")), "new",
                                r"new image: no PSF \(no usable PSF star \(0 selected"),
    "all_saturated": (lambda j: _rewrite(j.new, data=lambda d: np.full_like(d, 60000.0)), "new",
                      r"every pixel is saturated \(>= 60000 ADU\)"),
    "zero_size": (lambda j: _rewrite(j.new, data=lambda d: np.zeros((0, 0), np.float32)), "new",
                  r"zero-size image"),
    "missing_header_key": (lambda j: _rewrite(j.ref, header=lambda h: h.remove("MJD-OBS")), "ref",
                           r"reference header: missing required keys \['MJD-OBS'\]"),
    "catalogue_missing_columns": (_catalogue_without_mag, "catalog", r"lacks columns \['mag'\]"),
    "catalogue_not_parquet": (lambda j: Path(j.catalog).write_bytes(b"PAR1 not really"), "catalog",
                              r"unreadable catalogue Parquet file"),
    "missing_ref_file": (lambda j: Path(j.ref).unlink(), "ref", r"reference: no such FITS file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_recorded_error(job, case):
    breaker, culprit, problem = CASES[case]
    breaker(job)
    rec = run_sensor_job(job)
    assert rec.status == "failed" and rec.n_stamps == 0
    # file at fault, then exposure and sensor, then what is wrong
    prefix = f"{getattr(job, culprit)}: exposure {job.exposure} sensor {job.sensor}: "
    assert rec.reason.startswith(prefix), rec.reason
    assert re.search(problem, rec.reason[len(prefix):]), rec.reason
    assert "Traceback" not in rec.reason
    # recorded in the ledger, and no part (not even a temporary one) is left for it
    entry = read_ledger(Path(job.dataset_dir))[job.key]
    assert entry["status"] == "failed" and entry["reason"] == rec.reason
    parts = Path(job.dataset_dir) / "parts"
    assert not parts.exists() or not any(parts.iterdir())


def test_partly_nan_image_completes_with_flagged_stamps(job):
    """Not an error: NaN pixels are masked, stamps touching them flagged NEAR_MASK (zeros there)."""
    cols = np.arange(192)[None, :]
    _rewrite(job.new, data=lambda d: np.where((cols >= 80) & (cols < 110), np.nan, d).astype(np.float32))
    rec = run_sensor_job(job)
    assert rec.status == "done" and rec.n_stamps > 5, rec.reason
    part = Path(rec.path)
    rows = pd.read_parquet(part / "rows.parquet")
    stamps = np.load(part / "stamps.npy")
    assert np.isfinite(stamps).all()
    ix = np.floor(rows["x"] + 0.5)
    assert not ix.between(80, 109).any()  # nothing detected inside the NaN block
    touches = (ix + 14 >= 80) & (ix - 14 <= 109)  # the 29x29 stamp overlaps the block
    assert touches.sum() >= 2 and (rows.loc[touches, "flags"] & int(StampFlag.NEAR_MASK)).all()
    assert (~touches).sum() >= 2


def test_too_few_stars_with_seeing_falls_back_and_flags(job):
    """Not an error when the header gives the seeing: an analytic PSF, every stamp PSF_FALLBACK."""
    _rewrite(job.new, data=_noise)
    rec = run_sensor_job(job)
    assert rec.status == "done", rec.reason
    rows = pd.read_parquet(Path(rec.path) / "rows.parquet")
    assert len(rows) == 0 or (rows["flags"] & int(StampFlag.PSF_FALLBACK)).all()
    meta = json.loads((Path(rec.path) / "part.json").read_text())["meta"]
    assert meta["psf"]["psf_method"] != "epsf"


# ------------------------------------------------------------------ manifests
def _manifest(tmp_path: Path, rows: list[dict]) -> Path:
    p = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


ROW = {"exposure": "e1", "sensor": "00", "new": "images/e1/00_new.fits", "ref": "refs/00_ref.fits",
       "night": NIGHT, "mjd": 61045.1}


def test_manifest_unknown_column_is_refused_with_a_hint(tmp_path):
    p = _manifest(tmp_path, [{**ROW, "catalogue": "cat.parquet"}])
    with pytest.raises(ValueError, match=r"manifest\.csv: manifest has unknown columns \['catalogue'\].*"
                                         r"did you mean 'catalog'"):
        read_manifest(p)
    # a survey's own columns are kept when prefixed x_
    ok = read_manifest(_manifest(tmp_path, [{**ROW, "x_airmass": 1.2}]))
    assert ok["x_airmass"].iloc[0] == 1.2


@pytest.mark.parametrize("column,value,problem", [
    ("new", "../elsewhere/00_new.fits", r"line 2 column 'new': path '\.\./elsewhere/00_new\.fits' leaves"),
    ("ref", "refs/../../x.fits", r"line 2 column 'ref': path 'refs/\.\./\.\./x\.fits' leaves"),
    ("catalog", "/etc/passwd", r"line 2 column 'catalog': absolute path '/etc/passwd' is not allowed"),
    ("mjd", "yesterday", r"line 2 column 'mjd': not a number \('yesterday'\)"),
    ("hdu_new", "one", r"line 2 column 'hdu_new': not an HDU number"),
])
def test_manifest_bad_values_name_file_line_and_column(tmp_path, column, value, problem):
    p = _manifest(tmp_path, [ROW, {**ROW, "sensor": "01", column: value}][::-1])
    with pytest.raises(ValueError, match=str(tmp_path / "manifest.csv") + ": " + problem):
        read_manifest(p)


def test_manifest_paths_outside_only_when_allowed(tmp_path):
    p = _manifest(tmp_path, [{**ROW, "new": "/data/night/e1_00.fits", "ref": "../refs/00.fits"}])
    with pytest.raises(ValueError, match="absolute path"):
        jobs_from_manifest(p, tmp_path / "ds", night=NIGHT, inject=True, seed=0, tns=None, config_json="{}")
    assert not (tmp_path / "ds").exists()  # refused before any work
    jobs = jobs_from_manifest(p, tmp_path / "ds", night=NIGHT, inject=True, seed=0, tns=None, config_json="{}",
                              allow_outside_paths=True)
    assert jobs[0].new == "/data/night/e1_00.fits"
    assert Path(jobs[0].ref) == tmp_path / "../refs/00.fits"
    # a '..' that stays inside the directory is fine
    inside = read_manifest(_manifest(tmp_path, [{**ROW, "new": "refs/../images/e1/00_new.fits"}]))
    assert len(inside) == 1


def test_manifest_with_a_missing_file_fails_that_sensor_only(tiny, tmp_path):
    """A row whose file is absent is a per-sensor error (the night goes on), naming the file."""
    man = pd.read_csv(tiny / "manifest.csv", dtype=str)
    extra = {**man.iloc[0].to_dict(), "exposure": "2026010509999", "new": "images/missing_new.fits"}
    pd.concat([man, pd.DataFrame([extra])]).to_csv(tmp_path / "manifest.csv", index=False)
    for sub in ("images", "refs", "catalogs"):
        (tmp_path / sub).symlink_to(tiny / sub)
    jobs = jobs_from_manifest(tmp_path / "manifest.csv", tmp_path / "ds", night=NIGHT, inject=True, seed=0,
                              tns=None, config_json="{}")
    victim = next(j for j in jobs if j.exposure == "2026010509999")
    rec = run_sensor_job(victim)
    assert rec.status == "failed"
    assert rec.reason == (f"{tmp_path / 'images/missing_new.fits'}: exposure 2026010509999 sensor "
                          f"{victim.sensor}: new image: no such FITS file")


# ------------------------------------------------------------------ config files
@pytest.mark.parametrize("text,problem", [
    ("psf:\n  min_starz: 3\n", r"invalid sensor config \(psf\.min_starz: Extra inputs are not permitted"),
    ("tns_radius_arcsec: -1\n", r"invalid sensor config \(tns_radius_arcsec: Input should be greater than 0"),
    ("- just\n- a list\n", r"a sensor config must be a mapping"),
    ("psf: [unclosed\n", r"not valid YAML"),
])
def test_sensor_config_file_errors_name_file_and_key(tmp_path, text, problem):
    p = tmp_path / "sensor.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=str(p) + ": " + problem):
        sensor_config_json(p)


# ------------------------------------------------------------------ alerts (rbflow score-alerts)
def test_alerts_with_corrupt_cutouts_get_an_error_and_the_rest_are_scored():
    import gzip
    import io
    alerts = pytest.importorskip("storage.alerts")

    def fits_bytes(img, gz=True, table=False):
        buf = io.BytesIO()
        hdus = [fits.PrimaryHDU(img)]
        if table:
            hdus = [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]
        fits.HDUList(hdus).writeto(buf)
        return gzip.compress(buf.getvalue()) if gz else buf.getvalue()

    img = np.random.default_rng(0).normal(100, 5, (63, 63)).astype(np.float32)
    good = fits_bytes(img)
    broken = {
        "truncated_gzip": good[: len(good) // 2],
        "gzip_of_text": gzip.compress(b"not a FITS file"),
        "truncated_fits": fits_bytes(img, gz=False)[:4000],
        "table_not_image": fits_bytes(img, table=True),
        "all_nan": fits_bytes(np.full((63, 63), np.nan, np.float32)),
    }
    batch = [alerts.RawAlert("1", (good, good, good), survey="ztf")]
    batch += [alerts.RawAlert(name, (good, good, b), survey="ztf") for name, b in broken.items()]
    batch += [alerts.RawAlert("2", (good, good, good), survey="ztf")]
    prep = alerts.prepare_batch(batch, model_pixel_scale=1.0)
    errors = dict(zip(prep.candid, prep.error))
    assert errors == {"1": "", "2": "", "truncated_gzip": "corrupt_cutout", "gzip_of_text": "corrupt_cutout",
                      "truncated_fits": "corrupt_cutout", "table_not_image": "corrupt_cutout",
                      "all_nan": "empty_cutout"}
    assert np.isfinite(prep.stamps[[0, -1]]).all()
