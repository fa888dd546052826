"""Benchmark of the build: per-sensor cost with a per-stage breakdown, the building blocks
timed alone in the same run, stamps/s/core, and the Prefect+Dask share of wall time.

    .venv/bin/python benchmarks/build.py --preset tomoe --sensors 2 --overhead-sensors 100 --out bench_build.json

Part 1 simulates ``--sensors`` sensor images of the preset and runs ``process_sensor`` on each
in this process (one core), with the building blocks (sep background/extract, ePSF build,
injection, cut-outs, an FFT of the image) timed alone on the same image. Part 2 builds one
simulated night of ``--overhead-sensors`` sensor images (``--overhead-preset``) three times:
without Prefect and Dask (the same ``storage.builds`` functions and ``run_sensor_job`` on a
plain process pool of ``--workers`` processes, then the same join), with the real build flow
(Prefect + a fresh Dask LocalCluster of ``--workers`` workers, every task run recorded by a
Prefect server), and plain again (``--repeats R``: R flow runs, each between two plain ones).
All must give the same ``content_hash``. The Prefect+Dask share of the flow's wall time is
1 - plain / flow, per flow run against the mean of the plain runs beside it; the CPU seconds
of the flow process, the workers and the Prefect server are sampled in each run.

    .venv/bin/python benchmarks/build.py --preset tomoe --sensors 1 --overhead-sensors 100 --overhead-preset tomoe [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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


class CpuMonitor:
    """CPU seconds (user + system) of this process, its descendants and the Prefect server,
    by role, sampled every ``every`` seconds (a process's last sample counts)."""

    def __init__(self, server_pid: int | None = None, every: float = 0.25):
        import threading
        self.server_pid, self.every = server_pid, every
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil
        me = psutil.Process()
        procs = [(me, "flow process")] + [(c, "workers") for c in me.children(recursive=True)]
        if self.server_pid:
            try:
                srv = psutil.Process(self.server_pid)
                procs += [(srv, "prefect server")] + [(c, "prefect server") for c in srv.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for p, role in procs:
            try:
                t = p.cpu_times()
                # a temporary (ephemeral) Prefect server is a child of this process
                if role == "workers" and "prefect" in " ".join(p.cmdline()) and "server" in " ".join(p.cmdline()):
                    role = "prefect server"
                self.last[p.pid] = (role, t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __enter__(self):
        self._sample()
        self.start = {pid: v[1] for pid, v in self.last.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.by_role: dict[str, float] = {}
        for pid, (role, cpu) in self.last.items():
            self.by_role[role] = self.by_role.get(role, 0.0) + cpu - self.start.get(pid, 0.0)
        self.by_role = {k: round(v, 1) for k, v in sorted(self.by_role.items())}


def plain_build(manifest: Path, out: Path, night: str, workers: int, max_sensors: int | None = None,
                executor: str = "process") -> dict:
    """The build without Prefect and Dask: the same storage/builds functions and
    ``run_sensor_job`` on a plain ``concurrent.futures`` pool of ``workers`` spawned processes
    (``executor="thread"``: threads; ``"dask"``: mapped on a LocalCluster from the default spec,
    Dask without Prefect), then the same join. The baseline of the overhead figure."""
    if executor not in ("process", "thread", "dask"):
        raise ValueError(f"executor must be 'process', 'thread' or 'dask', got {executor!r}")
    from flows.build import sensor_config_json
    from flows.options import BuildOptions
    opts = BuildOptions(manifest=manifest, night=night, out=out, max_sensors=max_sensors, workers=workers)
    cfg_json = sensor_config_json(opts.config)
    # the environment Dask's nanny gives its workers (one BLAS/FFT thread each, and the glibc
    # malloc settings of deploy/dask/local.yaml): the plain processes get the same
    from flows.runner import worker_environ
    env = worker_environ(None)
    saved = {k: os.environ.get(k) for k in env}
    if executor == "process":
        os.environ.update(env)  # inherited by the spawned processes; restored below
    try:
        summary = _plain_build(manifest, out, night, workers, max_sensors, executor, opts, cfg_json)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return summary


def _plain_build(manifest, out, night, workers, max_sensors, executor, opts, cfg_json) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from flows.build import options_outcome
    from storage.builds import build_summary, plan_build, write_provenance
    from storage.sensor_io import run_sensor_job
    from storage.stampstore import dataset_lock, join_parts
    with dataset_lock(out, "build"):
        plan = plan_build(out, manifest, night=night, inject=opts.inject, seed=opts.seed, tns=opts.tns,
                          config_json=cfg_json, max_sensors=max_sensors, force=opts.force)
        if executor == "dask":  # Dask alone: the default spec's LocalCluster (its worker settings included)
            import distributed

            from flows.runner import load_cluster_spec
            kwargs = {**load_cluster_spec(None).get("cluster_kwargs", {}), "n_workers": workers}
            with distributed.LocalCluster(**kwargs) as cluster, distributed.Client(cluster) as client:
                client.gather(client.map(run_sensor_job, plan.todo, pure=False))
        else:
            pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                    if executor == "process" else ThreadPoolExecutor(workers))
            with pool:
                list(pool.map(run_sensor_job, plan.todo))
        outcome = options_outcome(plan, opts, cfg_json)
        joined = join_parts(out, list(outcome.done), outcome.meta)
    summary = build_summary(plan, outcome, joined)
    write_provenance(out, summary, outcome.ledger)
    return summary


def beside(runs: list[dict], key: str) -> list[tuple[float, float]]:
    """(flow value, mean of the two plain values beside it) of ``key`` for each flow run of an
    interleaved sequence (plain, flow, plain, ..., plain)."""
    modes = [r["mode"] for r in runs]
    if len(runs) < 3 or len(runs) % 2 == 0 or modes[::2] != ["plain"] * (len(runs) // 2 + 1) \
            or modes[1::2] != ["flow"] * (len(runs) // 2):
        raise ValueError(f"runs must alternate plain, flow, ..., plain; got {modes}")
    return [(runs[i][key], (runs[i - 1][key] + runs[i + 1][key]) / 2) for i in range(1, len(runs), 2)]


def interleaved_shares(runs: list[dict]) -> list[float]:
    """1 - plain / flow for each flow run of an interleaved sequence (plain, flow, plain, ...,
    plain), its plain baseline the mean of the two plain runs beside it."""
    return [1 - plain / flow for flow, plain in beside(runs, "wall_s")]


def night_config(preset: str, n_images: int):
    """The preset's survey with enough fields for ``n_images`` sensor images in one night (the
    visits spaced so that the fields fit), after the CLI's environment settings."""
    from flows.settings import configure_environment
    from tasks.simulate import get_preset
    configure_environment()
    os.environ["RBFLOW_NO_PROGRESS"] = "1"
    base = get_preset(preset)
    n_fields = max(1, int(np.ceil(n_images / (base.n_sensors * base.n_visits))))
    return base.model_copy(update={"n_fields": n_fields, "visit_interval_min": max(
        base.visit_interval_min, n_fields * base.field_time_s / 60 + 1)})


def overhead(n_images: int, workers: int, seed: int = 0, preset: str = "ci", server: str = "running",
             repeats: int = 1) -> dict:
    """Build flow over n sensor images vs the same build without Prefect and Dask.

    Runs, on the same simulated night: the plain build (process pool), the build flow
    (Prefect + a fresh Dask LocalCluster, every task run recorded by a Prefect server), the
    plain build again (the machine drifts: each flow run's baseline is the mean of the plain
    runs on either side), ``repeats`` flow runs in all: plain, flow, plain, ..., plain.
    Prefect+Dask share = 1 - plain / flow, per flow run; the result's share is their mean.
    ``server="running"``: a Prefect server started beforehand, as the deployments use;
    ``"ephemeral"``: no server configured, the flow starts its temporary one.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    from flows.build import build_dataset
    from flows.ops import free_port, start_server, stop_server
    from flows.options import BuildOptions
    from flows.runner import make_task_runner
    from flows.settings import prefect_session
    from storage.stampstore import read_ledger
    from storage.survey import simulate_survey
    cfg = night_config(preset, n_images)
    night = "2026-01-05"
    res: dict = {"preset": preset, "workers": workers, "server": server, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        simulate_survey(cfg, night, seed, tmp / "survey")
        manifest = tmp / "survey" / "manifest.csv"
        server_pid = None
        if server == "running":
            st = start_server(free_port(), home=tmp / "server")
            server_pid = st["pid"]
            os.environ["PREFECT_API_URL"] = st["api_url"]
        session = prefect_session()  # what the CLI does: the API URL (or a temporary server) for the run
        session.__enter__()
        try:
            runs = []
            for i, mode in enumerate(["plain", "flow"] * repeats + ["plain"]):
                out = tmp / f"ds-{i}-{mode}"
                with CpuMonitor(server_pid) as mon:
                    t0 = time.perf_counter()
                    if mode == "plain":
                        summary = plain_build(manifest, out, night, workers, max_sensors=n_images)
                    else:
                        opts = BuildOptions(manifest=manifest, night=night, out=out, max_sensors=n_images,
                                            workers=workers)
                        summary = build_dataset.with_options(task_runner=make_task_runner(None, workers))(opts)
                    wall = time.perf_counter() - t0
                led = read_ledger(out).values()
                work = sum(e["seconds"] for e in led)
                work_cpu = sum(e.get("cpu_seconds", 0.0) for e in led)  # the tasks' threads' CPU
                runs.append({"mode": mode, "wall_s": round(wall, 1), "work_in_tasks_s": round(work, 1),
                             "cpu_in_tasks_s": round(work_cpu, 1),
                             "cpu_s": mon.by_role, "cpu_total_s": round(sum(mon.by_role.values()), 1),
                             "content_hash": summary["content_hash"], "n_images": summary["n_sensors"]})
                print(f"  {mode:6s} wall {wall:7.1f} s  work in tasks {work:7.1f} s (CPU {work_cpu:6.1f} s)  "
                      f"cpu {mon.by_role}", flush=True)
        finally:
            session.__exit__(None, None, None)
            if server_pid:
                os.environ.pop("PREFECT_API_URL", None)
                stop_server(tmp / "server")
    if len({r["content_hash"] for r in runs}) != 1:
        raise RuntimeError(f"the plain and the flow builds differ: {[r['content_hash'] for r in runs]}")
    shares = interleaved_shares(runs)
    plains = [r for r in runs if r["mode"] == "plain"]
    flows = [r for r in runs if r["mode"] == "flow"]
    plain = float(np.mean([r["wall_s"] for r in plains]))
    flow = float(np.mean([r["wall_s"] for r in flows]))
    cpu = [flow - plain for flow, plain in beside(runs, "cpu_total_s")]
    res.update(n_images=flows[0]["n_images"], runs=runs, repeats=repeats, plain_wall_s=round(plain, 1),
               flow_wall_s=round(flow, 1), prefect_dask_share=round(float(np.mean(shares)), 4),
               prefect_dask_shares=[round(x, 4) for x in shares],
               prefect_dask_cpu_s=round(float(np.mean(cpu)), 1),
               idle_share=round(float(np.mean([1 - r["work_in_tasks_s"] / (r["wall_s"] * workers) for r in flows])), 4),
               note="share = 1 - plain wall / flow wall per flow run, the plain baseline the mean of the plain runs "
                    "beside it (same functions, same join, same hash), then the mean over flow runs; idle_share = "
                    "1 - work in tasks / (flow wall x workers) also counts the join and the queue's tail")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="tomoe")
    p.add_argument("--sensors", type=int, default=2)
    p.add_argument("--overhead-sensors", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overhead-preset", default="ci", help="preset of the sensor images of the overhead part")
    p.add_argument("--server", choices=["running", "ephemeral"], default="running",
                   help="overhead part: a Prefect server started first (as deployments use) or Prefect's "
                        "temporary one")
    p.add_argument("--repeats", type=int, default=1,
                   help="overhead part: flow runs, interleaved with plain ones (plain, flow, plain, ..., plain)")
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
        res["overhead"] = overhead(a.overhead_sensors, a.workers, preset=a.overhead_preset, server=a.server,
                                   repeats=a.repeats)
        o = res["overhead"]
        print(f"build of {o['n_images']} {o['preset']} images on {o['workers']} workers: plain {o['plain_wall_s']:.1f} s, "
              f"flow {o['flow_wall_s']:.1f} s -> Prefect+Dask share {100 * o['prefect_dask_share']:.1f} % "
              f"({o['prefect_dask_cpu_s']:.1f} CPU s more); idle share {100 * o['idle_share']:.1f} %"
              + (f"; per flow run {', '.join(f'{100 * x:.1f} %' for x in o['prefect_dask_shares'])}"
                 if o["repeats"] > 1 else ""))
    Path(a.out).write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
