"""Flow: score real alert packets with an exported model into the contract CSV.

``rbflow score-alerts --model M --alerts PATH --out CSV`` writes one row per alert:
``candid, score, error`` (score empty when error is set). Alerts stream in batches
(storage.alerts.iter_alert_batches); the CSV is written to a temporary sibling as it
goes and renamed at the end, so a crashed run leaves no half CSV under the final name.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, task

from flows.common import publish_table
from flows.options import ScoreAlertsOptions
from models.export import load_exported, read_model_json, score_stamps
from storage.alerts import iter_alert_batches, prepare_batch

CSV_COLUMNS = ("candid", "score", "error")


def score_alerts_file(options: ScoreAlertsOptions) -> dict:
    """Stream, decode, score and write; returns counts, errors and the rate (alerts/s)."""
    t0 = time.perf_counter()
    model_dir = Path(options.model)
    spec = read_model_json(model_dir)
    inp = spec.get("input", {})
    size = int(inp.get("size", 29))
    channels = tuple(inp.get("channels", ("new", "ref", "sub")))
    model_scale = options.model_pixel_scale or inp.get("pixel_scale_arcsec")
    program = load_exported(model_dir)
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    n, n_scored, errors = 0, 0, Counter()
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_COLUMNS)
            for batch in iter_alert_batches(options.alerts, options.batch_size, options.format):
                prep = prepare_batch(batch, size=size, channels=channels, model_pixel_scale=model_scale,
                                     tolerance=options.pixel_scale_tolerance,
                                     alert_pixel_scale=options.alert_pixel_scale)
                ok = np.array([e == "" for e in prep.error], bool)
                scores = np.full(len(batch), np.nan)
                if ok.any():
                    scores[ok] = score_stamps(program, prep.stamps[ok], batch_size=min(len(batch), 256),
                                             precision=options.precision)
                for cid, s, e in zip(prep.candid, scores, prep.error):
                    w.writerow((cid, "" if e else f"{s:.6g}", e))
                    if e:
                        errors[e] += 1
                n += len(batch)
                n_scored += int(ok.sum())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dt = time.perf_counter() - t0
    return {"n_alerts": n, "n_scored": n_scored, "errors": dict(errors), "seconds": dt,
            "alerts_per_s": n / dt if dt > 0 else float("nan"), "model_pixel_scale": model_scale,
            "out": str(out)}


score_task = task(score_alerts_file, name="score-alerts-file")


@flow(name="score-alerts", log_prints=True)
def score_alerts(options: ScoreAlertsOptions) -> dict:
    """Score alert cut-outs (ZTF/Rubin Parquet, Avro packets) with an exported model."""
    res = score_task(options)
    if res["model_pixel_scale"] is None:
        get_run_logger().warning("model.json gives no pixel scale and --model-pixel-scale is not set: "
                                 "cut-out pixel scales were NOT checked")
    get_run_logger().info("scored %d of %d alerts (%.0f alerts/s); errors %s -> %s", res["n_scored"],
                          res["n_alerts"], res["alerts_per_s"], res["errors"], res["out"])
    publish_table("score-alerts-summary", [{"key": k, "value": str(v)} for k, v in res.items()],
                  "alert scoring summary")
    return res


def run_score_alerts(options: ScoreAlertsOptions) -> dict:
    res = score_alerts(options)
    print(f"score-alerts: {res['n_scored']}/{res['n_alerts']} scored, errors {res['errors']}, "
          f"{res['alerts_per_s']:.0f} alerts/s -> {res['out']}")
    return res
