"""Benchmark of the build: per-sensor cost with a per-stage breakdown, the building blocks
timed alone in the same run, stamps/s/core, and the Prefect+Dask share of wall time.

    .venv/bin/python benchmarks/build.py --preset tomoe --sensors 2 --overhead-sensors 100 --out bench_build.json

Part 1 simulates ``--sensors`` sensor images of the preset and runs ``process_sensor`` on each
in this process (one core), with the building blocks (sep background/extract, ePSF build,
injection, cut-outs, an FFT of the image) timed alone on the same image. Part 2 runs the
real build flow (Prefect + a Dask LocalCluster) over ``--overhead-sensors`` small (ci)
sensor images and compares the wall time x workers with the sum of the work done inside
the tasks; the rest is orchestration (Prefect + Dask) overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _t(fn, *a, repeat=3, **kw):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*a, **kw)
        best = min(best, time.perf_counter() - t0)
    return best


def per_sensor(preset: str, n: int, seed: int = 0) -> dict:
    import sep

    from storage.fits_io import image_meta_from_header
    from tasks.cutout import cutouts
    from tasks.psf import PSFConfig, build_psf
    from tasks.sensor import SensorConfig, process_sensor
    from tasks.simulate import get_preset, simulate_field_sensor
    cfg = get_preset(preset)
    rows, blocks = [], []
    for s in range(n):
        t0 = time.perf_counter()
        sim = simulate_field_sensor(cfg, "2026-01-05", 0, s, seed)
        t_sim = time.perf_counter() - t0
        v = sim.visits[0]
        new_meta = image_meta_from_header(v.header)
        ref_meta = image_meta_from_header(sim.ref_header)
        t0 = time.perf_counter()
        res = process_sensor(v.new, sim.ref, new_header=v.header, ref_header=sim.ref_header, new_meta=new_meta,
                             ref_meta=ref_meta, catalog=sim.catalog, truth=None, tns=None, config=SensorConfig(),
                             seed=s, inject=True, id_prefix=f"b/{s}/")
        total = time.perf_counter() - t0
        rows.append({"sensor": s, "simulate_s": t_sim, "process_s": total, "n_stamps": len(res.table),
                     **{f"stage_{k}_s": float(v_) for k, v_ in res.timings.items()}})
        img = np.ascontiguousarray(v.new, dtype=np.float64)
        bkg = sep.Background(img)
        sub = img - bkg.back()
        xs = res.table["x"].to_numpy()
        ys = res.table["y"].to_numpy()
        # the library calls the per-sensor steps make, each timed alone on this image with the
        # parameters the pipeline uses: 3 backgrounds (new, ref, aligned ref), the ePSF, star
        # detection in new and ref, the ref resampled once (cubic), the Alard-Lupton design
        # matrix (150 star stamps convolved with the Gaussian basis), two image-size FFT
        # convolutions with the 15x15 matching kernel, detection on the difference with the
        # PSF matched filter for both signs, the cut-outs. process / sum(blocks) is the glue's
        # cost (goal < 2x).
        from scipy import ndimage, signal

        from tasks.detect import _filter_kernel
        psf = build_psf(v.new.astype(np.float32), meta=new_meta, config=PSFConfig())
        kern = _filter_kernel(psf)
        err = np.full_like(img, bkg.globalrms)
        yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]].astype(np.float64)
        k15 = np.random.default_rng(0).random((15, 15))
        from tasks.subtract import SubtractConfig, gaussian_basis
        sc = SubtractConfig()
        basis = gaussian_basis(sc.kernel_half_width, sc.basis_sigmas, sc.basis_degrees)
        w_big = 2 * (sc.stamp_half_width + sc.kernel_half_width) + 1
        star_stack = np.random.default_rng(1).random((sc.max_stars, 1, w_big, w_big))
        blocks.append({
            "sep_background_x3_s": 3 * _t(sep.Background, img),
            "epsf_build_s": _t(build_psf, v.new.astype(np.float32), meta=new_meta, config=PSFConfig(), repeat=1),
            "sep_extract_stars_x2_s": 2 * _t(sep.extract, sub, 5.0, err=bkg.globalrms),
            "resample_cubic_s": _t(ndimage.map_coordinates, img, [yy + 0.3, xx + 0.2], order=3, mode="nearest"),
            "fftconvolve_15x15_x2_s": 2 * _t(signal.fftconvolve, img, k15, mode="same"),
            "kernel_fit_basis_convolution_s": _t(signal.fftconvolve, star_stack, basis[None], mode="valid",
                                                 axes=(2, 3)),
            "sep_extract_psf_filter_pos_neg_s": 2 * _t(sep.extract, sub, 5.0, err=err, minarea=5,
                                                       filter_kernel=kern, deblend_cont=0.005, clean=False),
            "cutouts_s": _t(cutouts, [v.new, sim.ref, v.new], xs, ys),
        })
    keys = rows[0].keys()
    med = {k: float(np.median([r[k] for r in rows])) for k in keys if k != "sensor"}
    bmed = {k: float(np.median([b[k] for b in blocks])) for k in blocks[0]}
    blocks_sum = sum(bmed.values())
    return {"preset": preset, "image": [cfg.ny, cfg.nx], "n_sensors": n, "median": med, "blocks_alone": bmed,
            "process_over_blocks": med["process_s"] / blocks_sum if blocks_sum else None,
            "stamps_per_s_per_core": med["n_stamps"] / med["process_s"], "rows": rows}


def overhead(n_images: int, workers: int, seed: int = 0, preset: str = "ci") -> dict:
    """Build flow over n small sensor images: orchestration share of the wall time."""
    from flows.build import build_dataset
    from flows.options import BuildOptions
    from flows.runner import make_task_runner
    from flows.settings import configure_environment
    from storage.stampstore import read_ledger
    from storage.survey import simulate_survey
    from tasks.simulate import get_preset
    configure_environment()
    os.environ["RBFLOW_NO_PROGRESS"] = "1"
    base = get_preset(preset)
    n_fields = max(1, int(np.ceil(n_images / (base.n_sensors * base.n_visits))))
    cfg = base.model_copy(update={"n_fields": n_fields, "visit_interval_min": max(base.visit_interval_min,
                                                                                n_fields * base.field_time_s / 60 + 1)})
    with tempfile.TemporaryDirectory() as tmp:
        survey = Path(tmp) / "survey"
        simulate_survey(cfg, "2026-01-05", seed, survey)
        opts = BuildOptions(manifest=survey / "manifest.csv", night="2026-01-05", out=Path(tmp) / "ds",
                            max_sensors=n_images, workers=workers)
        runner = make_task_runner(None, workers)
        t0 = time.perf_counter()
        summary = build_dataset.with_options(task_runner=runner)(opts)
        wall = time.perf_counter() - t0
        ledger = read_ledger(Path(tmp) / "ds")
    work = sum(e["seconds"] for e in ledger.values())
    return {"preset": preset, "n_images": summary["n_sensors"], "workers": workers, "wall_s": wall, "work_in_tasks_s": work,
            "orchestration_share": 1 - work / (wall * workers),
            "note": "wall includes the LocalCluster start (~8 s) and the join; share = 1 - work / (wall x workers)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="tomoe")
    p.add_argument("--sensors", type=int, default=2)
    p.add_argument("--overhead-sensors", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overhead-preset", default="ci", help="preset of the sensor images of the overhead part")
    p.add_argument("--out", default="bench_build.json")
    a = p.parse_args()
    res = {"per_sensor": per_sensor(a.preset, a.sensors)}
    ps = res["per_sensor"]
    print(f"{a.preset} sensor {ps['image']}: process {ps['median']['process_s']:.2f} s "
          f"({ps['median']['n_stamps']:.0f} stamps, {ps['stamps_per_s_per_core']:.0f} stamps/s/core), "
          f"blocks alone {sum(ps['blocks_alone'].values()):.2f} s -> ratio {ps['process_over_blocks']:.2f}")
    for k, v in ps["median"].items():
        print(f"  {k:28s} {v:8.3f}")
    for k, v in ps["blocks_alone"].items():
        print(f"  block {k:22s} {v:8.3f}")
    if a.overhead_sensors:
        res["overhead"] = overhead(a.overhead_sensors, a.workers, preset=a.overhead_preset)
        o = res["overhead"]
        print(f"build flow, {o['n_images']} images on {o['workers']} workers: wall {o['wall_s']:.1f} s, "
              f"work in tasks {o['work_in_tasks_s']:.1f} s, Prefect+Dask share {100 * o['orchestration_share']:.1f} %")
    Path(a.out).write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
