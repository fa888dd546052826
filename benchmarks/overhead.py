"""Orchestration overhead: N sensor-image task runs through Prefect + Dask vs a plain loop,
and whether the Prefect server and UI stay responsive while 1000 task runs are recorded.

    .venv/bin/python benchmarks/overhead.py                      # 100 x 1 s, then 1000 x 0.05 s
    .venv/bin/python benchmarks/overhead.py --n 100 --work-s 1 --n-large 0 --out overhead.json

The work of one sensor image is a fixed number of FFT round trips of a 2048x1024 image
(calibrated once to ``--work-s`` seconds here, then identical in every mode), so the three
modes do exactly the same work:

- ``loop``: the function called N times in a plain Python loop (one core), in a fresh
  process given the environment Dask's nanny gives its workers (as is the calibration);
- ``dask``: the same calls as ``client.map`` on a LocalCluster of one worker x one thread
  (Dask alone, no Prefect);
- ``prefect+dask``: one Prefect flow, one task run per image (named like the build's),
  submitted to the flows' DaskTaskRunner (``flows/dask_runner.py``) on that same
  already-running cluster, every task run
  recorded by a real Prefect server on 127.0.0.1 (started here, database in a temp dir).

Then ``--n-empty`` task runs of no work, twice each on prefect_dask's DaskTaskRunner and on
the flows' one (``flows/dask_runner.py``): Prefect's own cost per task run, which the
machine's drift (10-15 % between two loops here) does not swamp.

Overhead = (wall time - loop wall time) / loop wall time. Starting a LocalCluster is a
one-off cost (reported apart; the demo and long-lived deployments reuse one). The large
run (``--n-large``) uses two workers and tiny work to stress orchestration; while it runs a
probe polls the server's /api/health, a flow-run query and the UI page every second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

SHAPE = (2048, 1024)


def sensor_image(i: int, n_fft: int) -> float:
    """One sensor image's worth of work: n_fft FFT round trips of a 2048x1024 image."""
    img = np.full(SHAPE, 1.0 + i % 7, dtype=np.float32)
    img[::97, ::89] = 3.0
    acc = 0.0
    for _ in range(n_fft):
        f = np.fft.rfft2(img)
        img = np.fft.irfft2(f * 0.999, s=SHAPE).astype(np.float32)
        acc += float(img[0, 0])
    return acc


def calibrate(work_s: float) -> int:
    """FFT round trips per ``work_s`` seconds, timed after a warm-up (a fresh process's first
    round trips page-fault their arrays in, and timing those made images half as long)."""
    sensor_image(0, 3)
    t0 = time.perf_counter()
    sensor_image(0, 10)
    per = (time.perf_counter() - t0) / 10
    return max(1, round(work_s / max(per, 1e-4)))


def warm_workers(address: str) -> None:
    """Import Prefect in the Dask workers once (a long-lived cluster has done so already)."""
    from distributed import Client
    with Client(address) as c:
        c.run(lambda: __import__("prefect.task_engine") and __import__("prefect_dask") and None)


def _loop(n: int, n_fft: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        sensor_image(i, n_fft)
    return time.perf_counter() - t0


def in_plain_process(what: str, *args) -> float:
    """``calibrate`` / ``loop`` in a fresh Python process given the environment Dask's nanny
    gives its workers (glibc malloc settings, one FFT thread): the baseline differs from the
    workers in orchestration only. (In this process the loop ran 23 % slower than in a worker
    once local.yaml set the workers' malloc: its image-size FFT arrays were mmap'ed anew.)"""
    import subprocess

    from flows.runner import worker_environ
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), f"--{what}", *map(str, args)],
                         env={**os.environ, **worker_environ(None)}, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_loop(n: int, n_fft: int) -> float:
    return in_plain_process("loop", n, n_fft)


def run_dask(address: str, n: int, n_fft: int) -> float:
    from distributed import Client
    with Client(address) as c:
        t0 = time.perf_counter()
        c.gather(c.map(sensor_image, range(n), [n_fft] * n, pure=False))
        return time.perf_counter() - t0


def run_prefect(address: str, n: int, n_fft: int, prefects_own_runner: bool = False) -> tuple[float, str]:
    from prefect import flow, runtime, task

    import prefect_dask

    import flows.dask_runner  # the flows' runner (settings shipped once)
    DaskTaskRunner = prefect_dask.DaskTaskRunner if prefects_own_runner else flows.dask_runner.DaskTaskRunner

    image_task = task(sensor_image, name="build-sensor")

    @flow(name="overhead-bench", task_runner=DaskTaskRunner(address=address))
    def bench(n: int, n_fft: int) -> str:
        futs = [image_task.with_options(task_run_name=f"build-bench-{i:04d}").submit(i, n_fft) for i in range(n)]
        for f in futs:
            f.result()
        return str(runtime.flow_run.id)

    t0 = time.perf_counter()
    run_id = bench(n, n_fft)
    return time.perf_counter() - t0, run_id


class Probe(threading.Thread):
    """Polls the server while a run records: health, a flow-run query, the UI page."""

    def __init__(self, base: str):
        super().__init__(daemon=True)
        self.base, self.stop, self.lat = base, threading.Event(), {"health": [], "flow_runs": [], "ui": []}
        self.errors = 0

    def run(self) -> None:
        import httpx
        with httpx.Client(timeout=30) as c:
            while not self.stop.is_set():
                for name, call in (("health", lambda: c.get(f"{self.base}/api/health")),
                                   ("flow_runs", lambda: c.post(f"{self.base}/api/flow_runs/filter",
                                                                json={"limit": 10, "sort": "START_TIME_DESC"})),
                                   ("ui", lambda: c.get(f"{self.base}/"))):
                    t0 = time.perf_counter()
                    try:
                        call().raise_for_status()
                        self.lat[name].append(time.perf_counter() - t0)
                    except Exception:  # noqa: BLE001
                        self.errors += 1
                self.stop.wait(1.0)

    def summary(self) -> dict:
        out = {"errors": self.errors}
        for k, v in self.lat.items():
            if v:
                out[k] = {"n": len(v), "median_ms": round(1000 * statistics.median(v), 1),
                          "p95_ms": round(1000 * sorted(v)[int(0.95 * (len(v) - 1))], 1),
                          "max_ms": round(1000 * max(v), 1)}
        return out


def count_task_runs(api_url: str, flow_run_id: str) -> int:
    import httpx
    r = httpx.post(f"{api_url}/task_runs/count", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}, timeout=30)
    r.raise_for_status()
    return int(r.json())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="Sensor images of the overhead comparison.")
    ap.add_argument("--work-s", type=float, default=1.0, help="Seconds of work per sensor image (calibrated).")
    ap.add_argument("--n-large", type=int, default=1000, help="Task runs of the large run (0: skip).")
    ap.add_argument("--n-empty", type=int, default=200,
                    help="Empty task runs timed on Prefect's DaskTaskRunner and the flows' one (0: skip).")
    ap.add_argument("--work-s-large", type=float, default=0.05, help="Seconds of work per image in the large run.")
    ap.add_argument("--out", type=Path, default=None, help="Write the figures as JSON here.")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--calibrate"]:  # the baseline's own process (in_plain_process)
        print(calibrate(float(argv[1])))
        return 0
    if argv[:1] == ["--loop"]:
        print(_loop(int(argv[1]), int(argv[2])))
        return 0
    args = ap.parse_args(argv)

    from distributed import LocalCluster

    from flows.ops import free_port, start_server, stop_server
    from flows.runner import load_cluster_spec
    load_cluster_spec(None)  # the Dask config of deploy/dask/local.yaml, as every flow's entry point
    home = Path(tempfile.mkdtemp(prefix="rbflow-bench-"))
    t0 = time.perf_counter()
    st = start_server(free_port(), home=home / "server")
    res: dict = {"server_start_s": round(time.perf_counter() - t0, 1), "cpu_count": os.cpu_count()}
    os.environ["PREFECT_API_URL"] = st["api_url"]
    from flows.settings import prefect_session
    try:
        with prefect_session():  # as the CLI: the server's URL (and its plain-HTTP settings) for the run
            n_fft = int(in_plain_process("calibrate", args.work_s))
            res["small"] = {"n": args.n, "work_s": args.work_s, "n_fft": n_fft}
            t0 = time.perf_counter()
            with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address="127.0.0.1:0") as cluster:
                res["cluster_start_s"] = round(time.perf_counter() - t0, 1)
                print(f"server {res['server_start_s']} s, LocalCluster {res['cluster_start_s']} s "
                      f"(dashboard {cluster.dashboard_link}); {args.n} images x {args.work_s} s "
                      f"({n_fft} FFT round trips each)", flush=True)
                warm_workers(cluster.scheduler_address)
                loop = run_loop(args.n, n_fft)
                print(f"  loop          {loop:8.1f} s", flush=True)
                dask = run_dask(cluster.scheduler_address, args.n, n_fft)
                print(f"  dask          {dask:8.1f} s  ({100 * (dask / loop - 1):+.1f} %)", flush=True)
                pf, _ = run_prefect(cluster.scheduler_address, args.n, n_fft)
                print(f"  prefect+dask  {pf:8.1f} s  ({100 * (pf / loop - 1):+.1f} %)", flush=True)
                loop2 = run_loop(args.n, n_fft)  # the machine drifts: bracket with a second loop
                print(f"  loop again    {loop2:8.1f} s", flush=True)
                if args.n_empty:  # Prefect's cost per task run alone, its runner vs the flows' one
                    empty = {}
                    for name, own in (("prefect_dask", True), ("flows", False), ("prefect_dask_again", True),
                                      ("flows_again", False)):
                        empty[name] = run_prefect(cluster.scheduler_address, args.n_empty, 0, own)[0]
                    per = {k: round(1000 * v / args.n_empty, 1) for k, v in empty.items()}
                    res["empty_task_run_ms"] = {"n": args.n_empty, **per}
                    print(f"  {args.n_empty} empty task runs, ms each: prefect_dask.DaskTaskRunner "
                          f"{per['prefect_dask']} / {per['prefect_dask_again']}, flows.dask_runner "
                          f"{per['flows']} / {per['flows_again']}", flush=True)
            base = (loop + loop2) / 2
            res["small"].update(loop_s=round(loop, 2), loop_again_s=round(loop2, 2), dask_s=round(dask, 2),
                                prefect_dask_s=round(pf, 2), dask_overhead_pct=round(100 * (dask / base - 1), 2),
                                prefect_overhead_pct=round(100 * (pf / base - 1), 2),
                                prefect_overhead_with_cluster_start_pct=round(
                                    100 * ((pf + res["cluster_start_s"]) / base - 1), 2))
            print(f"=> Prefect+Dask overhead at {args.n} images: {res['small']['prefect_overhead_pct']:+.1f} % "
                  f"(Dask alone {res['small']['dask_overhead_pct']:+.1f} %; with a fresh LocalCluster "
                  f"{res['small']['prefect_overhead_with_cluster_start_pct']:+.1f} %)", flush=True)

            if args.n_large:
                n_fft_l = int(in_plain_process("calibrate", args.work_s_large))
                with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as cluster:
                    warm_workers(cluster.scheduler_address)
                    loop_l = run_loop(args.n_large, n_fft_l)
                    probe = Probe(st["ui_url"])
                    probe.start()
                    pf_l, run_id = run_prefect(cluster.scheduler_address, args.n_large, n_fft_l)
                    time.sleep(2)
                    probe.stop.set()
                    probe.join()
                n_runs = count_task_runs(st["api_url"], run_id)
                res["large"] = {"n": args.n_large, "work_s": args.work_s_large, "workers": 2,
                                "loop_s": round(loop_l, 1), "prefect_dask_s": round(pf_l, 1),
                                "per_task_ms": round(1000 * (pf_l - loop_l / 2) / args.n_large, 1),
                                "task_runs_recorded": n_runs, "responsiveness": probe.summary()}
                print(f"large: {args.n_large} task runs x {args.work_s_large} s on 2 workers: loop {loop_l:.1f} s, "
                      f"prefect+dask {pf_l:.1f} s, {n_runs} task runs recorded; server while recording: "
                      f"{json.dumps(probe.summary())}", flush=True)
    finally:
        stop_server(home / "server")
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
