"""Peak memory of one sensor image processed in a Dask worker against the same work in a
plain process, measured in the same run.

    rbflow bench memory --preset tomoe --out bench_memory.json

Both runs simulate one sensor image of the preset (``simulate_field_sensor``) and run the
per-sensor chain (``process_sensor``: PSF, injection, subtraction, detection, cut-outs) on
its first visit, each in a fresh process: (a) a plain Python subprocess; (b) the only worker
of a Dask LocalCluster (1 worker process, 1 thread, no memory limit). Each reports its peak
RSS (``ru_maxrss``), its RSS before the work (imports, and for Dask the worker itself) and
the peak increment. Goal (issue 12): < 2 GB per Dask worker for a ``tomoe`` sensor
(2000 x 1128 px).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

GOAL_BYTES = 2 * 1024**3


def work(preset: str, sensor: int, seed: int) -> dict:
    """Simulate + process one sensor image; memory figures of this process."""
    import resource

    import psutil

    from storage.fits_io import image_meta_from_header
    from tasks.sensor import SensorConfig, process_sensor
    from tasks.simulate import get_preset, simulate_field_sensor
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    cfg = get_preset(preset)
    sim = simulate_field_sensor(cfg, "2026-01-05", 0, sensor, seed)
    v = sim.visits[0]
    rss_sim = proc.memory_info().rss
    res = process_sensor(v.new, sim.ref, new_header=v.header, ref_header=sim.ref_header,
                         new_meta=image_meta_from_header(v.header), ref_meta=image_meta_from_header(sim.ref_header),
                         catalog=sim.catalog, truth=None, tns=None, config=SensorConfig(), seed=sensor, inject=True,
                         id_prefix=f"m/{sensor}/")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"rss_before": rss0, "rss_after_simulate": rss_sim, "peak_rss": peak, "peak_increment": peak - rss0,
            "n_stamps": int(len(res.table)), "image": [int(v.new.shape[0]), int(v.new.shape[1])],
            "n_visits": len(sim.visits), "seconds": time.perf_counter() - t0}


def in_process(preset: str, sensor: int, seed: int) -> dict:
    code = ("import json, sys; sys.path.insert(0, %r); import memory as m; "
            "print('RESULT' + json.dumps(m.work(%r, %d, %d)))" % (str(Path(__file__).parent), preset, sensor, seed))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[6:])


def in_dask_worker(preset: str, sensor: int, seed: int) -> dict:
    from distributed import Client, LocalCluster

    from flows.runner import load_cluster_spec
    load_cluster_spec(None)  # the workers' environment of deploy/dask/local.yaml (glibc malloc settings)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit=0,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        pid = list(client.run(lambda: __import__("os").getpid()).values())[0]
        fut = client.submit(work, preset, sensor, seed, pure=False)
        r = fut.result()
        r["worker_pid"] = pid
        return r


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tomoe")
    ap.add_argument("--sensor", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench_memory.json"))
    a = ap.parse_args(argv)
    rows = {"in_process": in_process(a.preset, a.sensor, a.seed),
            "dask_worker": in_dask_worker(a.preset, a.sensor, a.seed)}
    gib = 1024**3
    res = {"preset": a.preset, "sensor": a.sensor, "rows": rows, "goal_bytes": GOAL_BYTES,
           "goal_met": rows["dask_worker"]["peak_rss"] < GOAL_BYTES,
           "dask_over_process_peak": rows["dask_worker"]["peak_rss"] / rows["in_process"]["peak_rss"]}
    img = rows["in_process"]["image"]
    print(f"one {a.preset} sensor image ({img[0]} x {img[1]} px, {rows['in_process']['n_stamps']} stamps)")
    print(f"{'where':<12} {'RSS before':>11} {'after sim':>10} {'peak':>9} {'increment':>10} {'seconds':>8}")
    for k, r in rows.items():
        print(f"{k:<12} {r['rss_before'] / gib:>9.2f} G {r['rss_after_simulate'] / gib:>8.2f} G "
              f"{r['peak_rss'] / gib:>7.2f} G {r['peak_increment'] / gib:>8.2f} G {r['seconds']:>8.1f}")
    print(f"goal < 2 GiB per Dask worker: {'met' if res['goal_met'] else 'NOT met'} "
          f"(peak {rows['dask_worker']['peak_rss'] / gib:.2f} GiB; Dask/process peak x{res['dask_over_process_peak']:.2f})")
    a.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
