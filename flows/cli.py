"""``rbflow``: one command per flow; each command's options are generated from the
flow's frozen pydantic options model (flows/options.py)."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError

from flows import options as O
from flows.ops import NightlyBuildOptions, RetrainOptions


def _unwrap(ann):
    """(base type, is_list, choices) of a field annotation."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return _unwrap(args[0])
    if origin is list:
        base, _, choices = _unwrap(typing.get_args(ann)[0])
        return base, True, choices
    if origin is typing.Literal:
        vals = typing.get_args(ann)
        return type(vals[0]), False, list(vals)
    return ann, False, None


def add_model_arguments(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    for name, f in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        base, is_list, choices = _unwrap(f.annotation)
        helptext = f.description or ""
        if not f.is_required():
            helptext += f" (default: {f.default})"
        kw: dict = {"dest": name, "help": helptext, "default": argparse.SUPPRESS}
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        conv = {int: int, float: float, Path: str, str: str}.get(base, str)
        if choices:
            kw["choices"] = choices
        if is_list:
            parser.add_argument(flag, type=conv, nargs="+", action="extend", required=f.is_required(), **kw)
        else:
            parser.add_argument(flag, type=conv, required=f.is_required(), **kw)


COMMANDS: dict[str, tuple[type[BaseModel], str, str]] = {
    # name: (options model, "module:function" entry point, help)
    "simulate": (O.SimulateOptions, "flows.simulate:run_simulate", "Simulate a survey night into a survey directory."),
    "build": (O.BuildOptions, "flows.build:run_build", "Build a dataset directory (stamps.zarr, stamps.parquet) from a survey."),
    "stage1": (O.Stage1Options, "flows.train:run_stage1", "Stage 1: k-fold training, out-of-fold scores, mislabel flags, unlabel.parquet."),
    "stage2": (O.Stage2Options, "flows.train:run_stage2", "Stage 2: semi-supervised training (CE + ECH + VAT) into a model directory."),
    "validate": (O.ValidateOptions, "flows.validate:run_validate", "Validate a model against TNS-matched reals on an unseen night."),
    "demo": (O.DemoOptions, "flows.demo:run_demo", "The whole chain on the embedded simulated survey."),
    "score-alerts": (O.ScoreAlertsOptions, "flows.score:run_score_alerts", "Score real alert packets (ZTF/Rubin Parquet, Avro) into a CSV: candid, score, error."),
    "nightly": (NightlyBuildOptions, "flows.deployments:run_nightly", "Nightly build: one night into ROOT/<night>/ (the nightly-build deployment)."),
    "retrain": (RetrainOptions, "flows.deployments:run_retrain", "Retraining: stage 1 + flagging + stage 2 over a window of nights, then validation."),
    "experiments": (O.ExperimentsOptions, "flows.experiments:run_experiments", "The paper's experiment grid: (method, label noise, seed) cells, cached, into docs/experiments/."),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rbflow", description="Real/bogus training and validation pipeline (Prefect flows).")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (model, _, helptext) in COMMANDS.items():
        sp = sub.add_parser(name, help=helptext, description=(model.__doc__ or helptext))
        add_model_arguments(sp, model)
    from flows.ops import add_commands  # server, worker, deploy, lineage: not flows, their own options
    add_commands(sub)
    from flows.bench import add_command as add_bench  # bench NAME [ARGS...]: benchmarks/NAME.py
    add_bench(sub)
    return p


def _load(entry: str):
    import importlib
    mod, fn = entry.split(":")
    return getattr(importlib.import_module(mod), fn)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "handler", None):
        from flows.settings import PrefectUnavailable, configure_environment
        configure_environment()
        try:
            return args.handler(args)
        except (PrefectUnavailable, FileNotFoundError, ValueError) as e:
            print(f"rbflow {args.command}: error: {e}", file=sys.stderr)
            return 1
    model, entry, _ = COMMANDS[args.command]
    values = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        opts = model(**values)
    except ValidationError as e:
        print(f"rbflow {args.command}: invalid options:", file=sys.stderr)
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "options"
            print(f"  --{loc.replace('_', '-')}: {err['msg']}", file=sys.stderr)
        return 2
    from flows.settings import PrefectUnavailable, configure_environment, prefect_session
    configure_environment()
    try:
        with prefect_session():
            _load(entry)(opts)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a clear one-line error; the traceback is in the Prefect logs
        from storage.stampstore import StoreError
        print(f"rbflow {args.command}: error: {e}", file=sys.stderr)
        if not isinstance(e, (StoreError, FileNotFoundError, ValueError, PrefectUnavailable)):
            raise
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
