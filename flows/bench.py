"""``rbflow bench NAME [ARGS...]``: run ``benchmarks/NAME.py``'s ``main`` with ARGS passed through.

Not a flow: benchmarks time the flows (and the alternatives) from outside. Every benchmark
prints a table and writes JSON (``--out``); ``rbflow bench NAME --help`` shows its options.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_"))


def run_bench(name: str, argv: list[str]) -> int:
    path = BENCH_DIR / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"no benchmark {name!r} (benchmarks/{name}.py); available: {', '.join(available())}")
    spec = importlib.util.spec_from_file_location(f"rbflow_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "main"):
        raise ValueError(f"benchmarks/{name}.py has no main()")
    old = sys.argv
    sys.argv = [str(path), *argv]
    try:
        takes_argv = len(inspect.signature(mod.main).parameters) > 0
        r = mod.main(list(argv)) if takes_argv else mod.main()
    except SystemExit as e:  # argparse --help / errors
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = old
    return r if isinstance(r, int) else 0


def cmd_bench(args) -> int:
    return run_bench(args.name, list(args.args))


def add_command(sub) -> None:
    sp = sub.add_parser("bench", help="Run a benchmark: benchmarks/NAME.py with its own options (prints a table, writes JSON).",
                        description=f"Benchmarks: {', '.join(available())}. Arguments after NAME go to the "
                        "benchmark (rbflow bench NAME --help lists them).")
    sp.add_argument("name", help="Benchmark name (a file under benchmarks/).")
    sp.add_argument("args", nargs=argparse.REMAINDER, help="Arguments passed to the benchmark.")
    sp.set_defaults(handler=cmd_bench)
