"""Options models validate at construction; the CLI is generated from them."""

import pytest
from pydantic import ValidationError

from flows import cli
from flows.options import BuildOptions, SimulateOptions, Stage1Options, Stage2Options


def parse(argv):
    args = cli.build_parser().parse_args(argv)
    model = cli.COMMANDS[args.command][0]
    return model(**{k: v for k, v in vars(args).items() if k != "command"})


def test_contract_commands_parse(tmp_path):
    o = parse(["build", "--preset", "ci", "--night", "2026-01-06", "--no-inject", "--out", str(tmp_path)])
    assert isinstance(o, BuildOptions) and o.inject is False and o.night == "2026-01-06"
    o = parse(["stage1", "--dataset", "a", "--dataset", "b", "c", "--out", "s"])
    assert [str(p) for p in o.dataset] == ["a", "b", "c"] and o.folds == 5
    o = parse(["stage2", "--dataset", "a", "--unlabel", "s/unlabel.parquet", "--mode", "removed", "--out", "m"])
    assert o.mode == "removed"
    o = parse(["simulate", "--preset", "ci", "--seed", "3", "--out", "d"])
    assert isinstance(o, SimulateOptions) and o.seed == 3
    o = parse(["validate", "--model", "m", "--dataset", "v", "--tns", "t.csv", "--out", "r"])
    assert o.radius_arcsec == 2.0


def test_every_field_is_documented():
    for name, (model, _, _) in cli.COMMANDS.items():
        for field, info in model.model_fields.items():
            assert info.description, f"{name}.{field} lacks a description"
        assert model.model_config["frozen"] and model.model_config["extra"] == "forbid"


def test_options_are_validated(tmp_path):
    with pytest.raises(ValidationError, match="exactly one of preset or manifest"):
        BuildOptions(out=tmp_path)
    with pytest.raises(ValidationError, match="night must be YYYY-MM-DD"):
        BuildOptions(preset="ci", night="26/01/05", out=tmp_path)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Stage1Options(dataset=["a"], out="s", fold=3)
    with pytest.raises(ValidationError, match="greater than or equal to 2"):
        Stage1Options(dataset=["a"], out="s", folds=1)
    with pytest.raises(ValidationError, match="needs l_lds > 0"):
        Stage2Options(dataset=["a"], unlabel="u", out="m", mode="unlabelled", l_lds=0)
    o = parse(["experiments", "--preset", "ci", "--flagger", "cnn+rf", "--flag-cut", "0.9"])
    assert (o.flagger, o.flag_cut) == ("cnn+rf", 0.9)
    with pytest.raises(ValidationError, match="flag_cut"):
        parse(["experiments", "--preset", "ci", "--flag-cut", "0.3"])
    with pytest.raises(SystemExit):  # argparse: not one of the flaggers
        parse(["experiments", "--preset", "ci", "--flagger", "rf"])


def test_cli_reports_bad_options_before_any_work(capsys, tmp_path):
    rc = cli.main(["stage1", "--dataset", "a", "--out", str(tmp_path / "s"), "--folds", "1"])
    assert rc == 2
    assert "--folds" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
