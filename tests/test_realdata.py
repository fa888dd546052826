"""Real third-party data through the chain (marker ``realdata``).

The data live in ``../shared/data`` beside the repository (override: ``RBFLOW_SHARED_DATA``)
and are never copied into it; every test skips with a clear message where they are absent.
Kept fast (a few seconds in all): small samples of the real files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RBFLOW_SHARED_DATA") or (REPO.parent / "shared" / "data"))

pytestmark = pytest.mark.realdata


def need(rel: str) -> Path:
    """The path under the shared data directory, or skip the test saying what is missing."""
    p = DATA / rel
    if not p.exists():
        pytest.skip(f"real data not available: {p} is absent (set RBFLOW_SHARED_DATA to the shared data directory)")
    return p


def _bench():
    from tests.conftest import load_benchmark
    return load_benchmark("realdata")


# ------------------------------------------------------------------ alerts

def test_ztf_alert_cutouts_real():
    """Every real ZTF alert's cut-outs decode and reach the model's input (edge-of-CCD stamps
    included: the candidate lands at the stamp centre, the missing side is NaN)."""
    import pyarrow.parquet as pq
    from storage.alerts import iter_alert_batches, prepare_batch
    src = need("ztf-alerts/ztf_alert_triplets.parquet")
    n, edge = 0, 0
    for batch in iter_alert_batches(src, batch_size=256):
        assert len(batch) <= 256
        prep = prepare_batch(batch, model_pixel_scale=1.01)
        assert set(prep.error) == {""}
        assert prep.stamps.shape == (len(batch), 3, 29, 29)
        centre = prep.stamps[:, :, 14, 14]
        assert np.isfinite(centre).mean() > 0.99
        edge += int(np.isnan(prep.stamps[:, 0]).all(axis=1).any(axis=1).sum())
        n += len(batch)
    assert n == pq.ParquetFile(src).metadata.num_rows == 995 and edge >= 1


def test_rubin_alerts_pixel_scale_mismatch():
    """Rubin cut-outs are 0.2"/px (from their WCS): a 1"/px model refuses them row by row."""
    from storage.alerts import iter_alert_batches, prepare_batch
    src = need("rubin-alerts/rubin_alert_triplets.parquet")
    batch = next(iter(iter_alert_batches(src, batch_size=40)))
    prep = prepare_batch(batch, model_pixel_scale=1.01)
    assert set(prep.error) == {"pixel_scale_mismatch"}
    assert np.allclose([s for s in prep.pixel_scale], 0.2, rtol=0.02)
    ok = prepare_batch(batch, model_pixel_scale=0.2)
    assert ok.error.count("") >= 35 and ok.stamps.shape == (40, 3, 29, 29)


def test_ir_avro_packets():
    """The raw Avro packets (Gattini-IR, WINTER) read as brokers send them; Gattini-IR's
    8.7"/px cut-outs are refused by a 1"/px model, WINTER's (~1.1"/px) are brought to 29x29."""
    from storage.alerts import iter_alert_batches, prepare_batch
    d = need("ir-alerts")
    alerts = [a for b in iter_alert_batches(d, batch_size=10) for a in b]
    assert len(alerts) == 28 and {a.survey for a in alerts} == {"pgir", "winter"}
    prep = prepare_batch(alerts, model_pixel_scale=1.01, tolerance=0.1)
    err = dict(zip(prep.candid, prep.error))
    assert err["114297926"] == "pixel_scale_mismatch" and err["3608694"] == ""
    assert sum(e == "" for e in prep.error) == 11 and sum(e == "pixel_scale_mismatch" for e in prep.error) == 17
    ok = np.array([e == "" for e in prep.error])
    assert np.isfinite(prep.stamps[ok][:, :, 14, 14]).all()


# ------------------------------------------------------------------ images

def test_decam_injection_recovery_real_pixels():
    """Bright injections into the real DECam new image are all recovered, with small flux bias."""
    need("images/sfft-decam-2epoch/Stack-DEC-OBS04.fits")
    bench = _bench()
    ir = bench.decam_injection_recovery(DATA, trials=3)
    inj = ir["injections"]
    depth = ir["depth_5sigma"]
    bright = inj[inj["mag"] < depth - 2.0]
    faint = inj[inj["mag"] > depth + 0.75]
    assert len(bright) >= 8 and ir["psf"].method == "epsf"
    assert bright["detected"].mean() >= 0.9
    assert abs(bright["dmag"].median()) < 0.05
    assert faint["detected"].mean() < bright["detected"].mean()
    assert 16.0 < depth < 21.0  # instrumental, zp 25


def test_decam_difference_matches_sfft_in_the_bulk():
    need("images/sfft-decam-2epoch/FinalDifference.fits")
    s = _bench().difference_comparison(DATA)["stats"]
    assert 0.8 < s["std_ours"] / s["std_real"] < 1.25
    assert s["robust_std_ours_minus_real_over_std_real"] < 0.5
    assert s["pearson_r"] > 0.3


def test_m67_epsf_many_real_stars():
    need("images/dss-m67-and-spitzer/M6707HH.fits")
    psf, seconds, _ = _bench().m67_epsf(DATA)
    assert psf.method == "epsf" and psf.n_stars >= 30
    assert 1.0 < psf.fwhm_px < 6.0 and psf.ellipticity < 0.2 and psf.residual_rms < 0.1


def test_ntt_detection_against_its_sextractor_catalogue():
    need("images/sep-ntt-emmi/image.cat")
    r = _bench().ntt_detection(DATA)
    assert r["n_sextractor"] == 65 and r["matched_1px"] >= 0.85 * r["n_sextractor"]


def test_manifest_build_reads_real_decam_fits(tmp_path):
    """A hand-written manifest row pointing at the real DECam FITS goes through the sensor job
    (header keys named in the config: EXP_BN, CCDNUM, DATE-OBS)."""
    d = need("images/sfft-decam-2epoch")
    from storage.fits_io import HeaderKeys
    from storage.sensor_io import SensorJob, process_sensor_files
    bench = _bench()
    job = SensorJob(dataset_dir=str(tmp_path), key="e_s", night="2018-08-04", exposure="e", sensor="37",
                    new=str(d / "Stack-DEC-OBS04.fits"), ref=str(d / "Stack-DEC-OBS18.fits"), seed=1,
                    config_json=bench.decam_config().model_dump_json(),
                    header_keys_json=HeaderKeys(**bench.DECAM_KEYS).model_dump_json())
    result, table, inj = process_sensor_files(job)
    assert result.stamps.shape[1:] == (3, 29, 29) and len(table) == len(result.stamps) > 10
    assert (table["label"] == 1).sum() >= 5 and table["true_label"].isna().all()
