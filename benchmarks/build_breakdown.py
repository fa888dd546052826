"""Where the build flow's orchestration time goes: the same night built without Prefect and
Dask (plain process pool), with Dask alone (``client.map`` of the same function on a
LocalCluster from ``deploy/dask/local.yaml``), and as the real flow (Prefect + that cluster,
every task run recorded by a running Prefect server), interleaved ``--repeats`` times.

Per run: wall time; the tasks' own wall and CPU time (ledger ``seconds`` / ``cpu_seconds``:
the gap is time spent waiting for a core); CPU seconds of the flow process (which hosts the
Dask scheduler and nannies), of the workers outside the tasks' threads (Dask's event loop,
unpickling, Prefect's engine, imports and background threads), and of the Prefect server.
Then Dask's share (dask vs plain) and Prefect's (flow vs dask), and each cost per task run.
All three give the same ``content_hash`` (checked).

    .venv/bin/python benchmarks/build_breakdown.py --sensors 20 --repeats 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location("_rbflow_bench_build", Path(__file__).with_name("build.py"))
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)
MODES = ("plain", "dask", "flow")


def breakdown(n_images: int, workers: int = 2, preset: str = "tomoe", repeats: int = 1, seed: int = 0) -> dict:
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    from flows.build import build_dataset
    from flows.ops import free_port, start_server, stop_server
    from flows.options import BuildOptions
    from flows.runner import make_task_runner
    from flows.settings import prefect_session
    from storage.stampstore import read_ledger
    from storage.survey import simulate_survey
    cfg = _build.night_config(preset, n_images)
    night, runs = "2026-01-05", []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        simulate_survey(cfg, night, seed, tmp / "survey")
        manifest = tmp / "survey" / "manifest.csv"
        st = start_server(free_port(), home=tmp / "server")
        os.environ["PREFECT_API_URL"] = st["api_url"]
        session = prefect_session()
        session.__enter__()
        try:
            for i, mode in enumerate(list(MODES) * repeats):
                out = tmp / f"ds-{i}-{mode}"
                with _build.CpuMonitor(st["pid"], every=1.0) as mon:
                    t0 = time.perf_counter()
                    if mode == "plain":
                        summary = _build.plain_build(manifest, out, night, workers, max_sensors=n_images)
                    elif mode == "dask":  # the same plan, map and join on a LocalCluster from the default spec
                        summary = _build.plain_build(manifest, out, night, workers, max_sensors=n_images,
                                                     executor="dask")
                    else:
                        opts = BuildOptions(manifest=manifest, night=night, out=out, max_sensors=n_images,
                                            workers=workers)
                        summary = build_dataset.with_options(task_runner=make_task_runner(None, workers))(opts)
                    wall = time.perf_counter() - t0
                led = list(read_ledger(out).values())
                task_cpu = sum(e.get("cpu_seconds", 0.0) for e in led)
                cpu = mon.by_role
                row = {"mode": mode, "wall_s": round(wall, 2), "task_wall_s": round(sum(e["seconds"] for e in led), 2),
                       "task_cpu_s": round(task_cpu, 2), "flow_process_cpu_s": cpu.get("flow process", 0.0),
                       "workers_outside_tasks_cpu_s": round(cpu.get("workers", 0.0) - task_cpu, 2),
                       "server_cpu_s": cpu.get("prefect server", 0.0), "content_hash": summary["content_hash"],
                       "n_tasks": len(led)}
                runs.append(row)
                print(f"  {mode:5s} wall {wall:6.1f} s  tasks: wall {row['task_wall_s']:6.1f} cpu {task_cpu:6.1f}  "
                      f"cpu: flow process {row['flow_process_cpu_s']:5.1f} workers outside tasks "
                      f"{row['workers_outside_tasks_cpu_s']:5.1f} server {row['server_cpu_s']:5.1f}", flush=True)
        finally:
            session.__exit__(None, None, None)
            os.environ.pop("PREFECT_API_URL", None)
            stop_server(tmp / "server")
    if len({r["content_hash"] for r in runs}) != 1:
        raise RuntimeError(f"the builds differ: {[(r['mode'], r['content_hash']) for r in runs]}")
    keys = ["wall_s", "task_wall_s", "task_cpu_s", "flow_process_cpu_s", "workers_outside_tasks_cpu_s", "server_cpu_s"]
    mean = {m: {k: round(float(np.mean([r[k] for r in runs if r["mode"] == m])), 2) for k in keys} for m in MODES}
    n = runs[0]["n_tasks"]
    diff = {name: {k: round(mean[a][k] - mean[b][k], 2) for k in keys}
            for name, a, b in (("dask_vs_plain", "dask", "plain"), ("prefect_vs_dask", "flow", "dask"))}
    return {"preset": preset, "workers": workers, "n_tasks": n, "repeats": repeats, "cpu_count": os.cpu_count(),
            "runs": runs, "mean": mean, "difference": diff,
            "share": {"dask": round(1 - mean["plain"]["wall_s"] / mean["dask"]["wall_s"], 4),
                      "prefect": round(1 - mean["dask"]["wall_s"] / mean["flow"]["wall_s"], 4),
                      "prefect_dask": round(1 - mean["plain"]["wall_s"] / mean["flow"]["wall_s"], 4)},
            "prefect_per_task_ms": {k: round(1000 * v / n, 1) for k, v in diff["prefect_vs_dask"].items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sensors", type=int, default=20, help="sensor images (task runs) per build")
    ap.add_argument("--workers", type=int, default=2, help="processes / Dask workers")
    ap.add_argument("--preset", default="tomoe", help="simulated survey preset")
    ap.add_argument("--repeats", type=int, default=1, help="times the plain, dask, flow sequence runs")
    ap.add_argument("--out", type=Path, default=Path("docs/experiments/bench/build_breakdown.json"))
    a = ap.parse_args(argv)
    res = breakdown(a.sensors, a.workers, a.preset, a.repeats)
    print(f"\n{res['n_tasks']} {a.preset} images, {a.workers} workers, mean of {a.repeats}:")
    print(f"| | {' | '.join(MODES)} | Dask (dask - plain) | Prefect (flow - dask) | Prefect per task run |")
    print("|---|---|---|---|---|---|---|")
    for k in res["mean"]["plain"]:
        print(f"| {k} | " + " | ".join(f"{res['mean'][m][k]:.1f}" for m in MODES)
              + f" | {res['difference']['dask_vs_plain'][k]:+.1f} | {res['difference']['prefect_vs_dask'][k]:+.1f}"
              f" | {res['prefect_per_task_ms'][k]:+.0f} ms |")
    s = res["share"]
    print(f"shares of wall: Dask {100 * s['dask']:.1f} %, Prefect {100 * s['prefect']:.1f} %, "
          f"Prefect+Dask {100 * s['prefect_dask']:.1f} %")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
