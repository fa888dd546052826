"""Stamp galleries per true_class (docs/ figures), beside real ZTF triplets.

    # from a dataset directory (one PNG per true_class + overview.png)
    .venv/bin/python docs/scripts/class_gallery.py runs/demo/dataset docs/img/gallery --per-class 20

    # the realism zoo of docs/simulation.md: simulate --zoo sensors of the ztf preset with every
    # artifact / event rate raised (so that each kind has >= 20 detections), run the per-sensor
    # chain without injections, and put 20 real ZTF triplets beside each class
    .venv/bin/python docs/scripts/class_gallery.py --zoo 12 --ztf docs --prefix gallery- --dpi 70

Each PNG: 20 simulated new | ref | sub triplets of one true_class (drawn at random with a fixed
seed), then 20 real ZTF triplets from ``../shared/data/ztf-alerts/`` (centre-cropped 63 -> 29 px,
drawn by the same function and stretch): low-``drb`` (< 0.1) alerts beside bogus classes, known
asteroids beside ``asteroid``, TNS-matched alerts beside the other real classes. The real data
are read in place, never copied.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tasks.gallery import gallery_figure  # noqa: E402

# the zoo: the ztf preset on 512x512 sensors with each realism rate raised and more bright stars
# (a flatter star count, slope 0.2, from 9 mag) -- not realistic rates: chosen so that every kind
# yields detections in a few sensors
ZOO = dict(nx=512, ny=512, n_fields=1, star_mag_range=(9.0, 21.5), star_slope=0.2, cosmic_ray_rate=6.0,
           hot_pixel_rate=6.0, bad_column_rate=2.0, dead_pixel_rate=8.0, cosmic_ray_track_rate=4.0, spike_rate=1.0,
           bleed_rate=1.0, halo_rate=1.0, dipole_rate=0.3, star_flux_scatter=0.05, psf_variation=0.1,
           satellite_rate=1.0, pattern_noise_rate=0.2, ref_mask_rate=3.0, ref_edge_rate=1.0, crowded_rate=0.3,
           fast_asteroid_rate=3.0, nuclear_rate=2.0, supernova_rate=8.0, hostless_rate=2.0, variable_rate=6.0,
           asteroid_rate=2.0, tracking_error_rate=0.35)
REAL_FOR = {"asteroid": "asteroid", "injected": "tns", "supernova": "tns", "hostless": "tns", "nuclear": "tns",
            "variable": "tns"}


def zoo_dataset(n_sensors: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Simulate n_sensors zoo sensors (2 visits each) and run tasks.sensor.process_sensor (no injection)."""
    from tasks.sensor import SensorConfig, process_sensor
    from tasks.simulate import get_preset, simulate_field_sensor
    from tasks.types import ImageMeta
    cfg = get_preset("ztf").model_copy(update={**ZOO, "n_sensors": max(n_sensors, 1)})

    def meta(h, exposure, sensor):
        return ImageMeta(exposure=exposure, sensor=sensor, night=str(h.get("NIGHT", "")), mjd=float(h["MJD-OBS"]),
                         gain=float(h["GAIN"]), saturation=float(h["SATURATE"]), zeropoint=float(h["MAGZP"]),
                         read_noise=float(h["RDNOISE"]), pixel_scale=float(h["PIXSCALE"]), seeing=float(h["SEEING"]))

    stamps, tables = [], []
    for s in range(n_sensors):
        sim = simulate_field_sensor(cfg, "2026-01-05", 0, s, seed)
        truth = dict(events=sim.events, artifacts=sim.artifacts, stars=sim.stars, galaxies=sim.galaxies)
        for v in sim.visits:
            r = process_sensor(v.new, sim.ref, new_header=v.header, ref_header=sim.ref_header,
                               new_meta=meta(v.header, v.exposure, sim.sensor_id),
                               ref_meta=meta(sim.ref_header, "ref", sim.sensor_id), catalog=sim.catalog,
                               truth=truth, config=SensorConfig(), seed=seed, inject=False)
            stamps.append(r.stamps)
            tables.append(r.table)
            print(f"zoo sensor {s} visit {v.visit}: {len(r.table)} detections", flush=True)
    return np.concatenate(stamps), pd.concat(tables, ignore_index=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="?", help="dataset directory (omit with --zoo)")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zoo", type=int, default=0, help="simulate this many zoo sensors instead of reading a dataset")
    p.add_argument("--ztf", action="store_true", help="add real ZTF triplets beside each class")
    p.add_argument("--prefix", default="", help="PNG name prefix (docs: 'gallery-')")
    p.add_argument("--dpi", type=int, default=80)
    a = p.parse_args()
    if a.zoo:
        arr, table = zoo_dataset(a.zoo, a.seed)
    else:
        from storage.stampstore import open_dataset
        view = open_dataset(Path(a.dataset))
        table, arr = view.table(), view.stamps()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    real = {}
    if a.ztf:
        import sim_vs_real as svr
        for which in ("bogus", "asteroid", "tns"):
            real[which] = svr.load_ztf(0.1, which)
    rng = np.random.default_rng(a.seed)
    overview = []
    counts = {}
    for cls, idx in sorted(table.groupby(table["true_class"].astype(str)).indices.items()):
        pick = np.sort(rng.choice(idx, min(a.per_class, len(idx)), replace=False))
        stamps = np.stack([np.asarray(arr[int(i)]) for i in pick])
        titles = [f"sim {cls} snr={table.snr.iloc[i]:.0f}" for i in pick]
        counts[cls] = len(idx)
        if real:
            which = REAL_FOR.get(cls, "bogus")
            rs, rm = real[which]
            k = rng.choice(len(rs), min(a.per_class, len(rs)), replace=False)
            lab = {"bogus": "ZTF drb<0.1", "asteroid": "ZTF known asteroid", "tns": "ZTF TNS object"}[which]
            stamps = np.concatenate([stamps, rs[k]])
            titles += [f"{lab} drb={rm.drb.iloc[j]:.2f}" for j in k]
        sup = f"true_class = {cls} ({len(idx)} detections)" + (
            f": {len(pick)} simulated, then {len(stamps) - len(pick)} real ZTF ({lab})" if real else "")
        fig = gallery_figure(stamps, titles, per_row=5, suptitle=sup)
        fig.savefig(out / f"{a.prefix}{cls}.png", dpi=a.dpi)
        plt.close(fig)
        overview.append((cls, stamps[:min(4, len(pick))]))
        print(f"{cls}: {len(idx)} stamps -> {out / f'{a.prefix}{cls}.png'}")
    stamps = np.concatenate([s for _, s in overview])
    titles = [c for c, s in overview for _ in range(len(s))]
    fig = gallery_figure(stamps, titles, per_row=4, suptitle="each true_class, 4 random stamps (new | ref | sub)")
    fig.savefig(out / f"{a.prefix}overview.png", dpi=a.dpi)
    plt.close(fig)
    print("counts:", counts)


if __name__ == "__main__":
    main()
