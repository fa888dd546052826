"""Flow: simulate one night of the embedded survey into a survey directory."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.options import SimulateOptions
from flows.runner import make_task_runner


def _simulate_one(config, night: str, field: int, sensor: int, seed: int, out_dir: str) -> list[dict]:
    """Simulate one (field, sensor) for every visit of the night and write its FITS."""
    from storage.survey import write_field_sensor, write_truth_part
    from tasks.simulate import simulate_field_sensor
    sim = simulate_field_sensor(config, night, field, sensor, seed)
    rows = write_field_sensor(sim, Path(out_dir))
    write_truth_part(sim, Path(out_dir))
    return rows


simulate_task = task(_simulate_one, name="simulate-sensor")
def _finalize(out: str, rows: list[dict], night: str, config, seed: int):
    from storage.survey import finalize_survey
    return finalize_survey(Path(out), rows, night, config, seed)


finalize_task = task(_finalize, name="finalize-survey")


def submit_simulation(preset: str, night: str, seed: int, out: Path, max_sensors: int | None = None) -> Path:
    """Fan the simulation out per (field, sensor) on the current flow's task runner."""
    from tasks.simulate import get_preset
    config = get_preset(preset)
    n_sensors = min(config.n_sensors, max_sensors or config.n_sensors)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    futures = [simulate_task.with_options(task_run_name=f"simulate-{night}-f{f:03d}-s{s:02d}")
               .submit(config, night, f, s, seed, str(out))
               for f in range(config.n_fields) for s in range(n_sensors)]
    rows = [r for fut in futures for r in fut.result()]
    finalize_task.submit(str(out), rows, night, config, seed).result()
    get_run_logger().info("simulated %d sensor images of night %s into %s", len(rows), night, out)
    return out / "manifest.csv"


@flow(name="simulate-survey", log_prints=True)
def simulate_survey(options: SimulateOptions) -> str:
    """Simulate a night of the survey preset: FITS new/ref images, catalogues, truth, tns.csv."""
    return str(submit_simulation(options.preset, options.night, options.seed, options.out, options.max_sensors))


def run_simulate(options: SimulateOptions) -> str:
    runner = make_task_runner(options.cluster, options.workers)
    manifest = simulate_survey.with_options(task_runner=runner)(options)
    print(f"survey written: {manifest}")
    return manifest
