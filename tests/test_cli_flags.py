"""`lintheory train`'s flags come from the configuration dataclasses: one source of defaults and help."""

import argparse
import dataclasses

import pytest

from lintheory import cli
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig
from lintheory.run import flags, recipes
from lintheory.run.train import TrainConfig

OLD_FLAGS = ["--d", "--n-context", "--layers", "--steps", "--batch-size", "--seed", "--noise-std", "--out",
             "--resume", "--x-cov-diag", "--dtype", "--lr", "--warmup", "--heads", "--output-proj", "--mlp",
             "--attention", "--max-skipped"]


def build(args, classes=cli.TRAIN_CLASSES):
  return flags.build_configs(args, classes, aliases=cli.ALIASES)


def train_parser():
  sub = cli.build_parser()._subparsers._group_actions[0]
  return sub.choices["train"]


def test_every_config_field_is_a_flag_with_its_comment_as_help():
  options = {o: a for a in train_parser()._actions for o in a.option_strings}
  seen = set()
  for cls in (TaskConfig, ModelConfig, TrainConfig):
    comments = flags.field_comments(cls)
    for f in dataclasses.fields(cls):
      if f.name in seen:  # d: one flag for the task and the model, its help from TaskConfig
        continue
      seen.add(f.name)
      action = options[flags.flag_of(f.name)]
      assert comments[f.name] and action.help.startswith(comments[f.name]), f.name
      default = f"by depth, {recipes.describe(f.name)}" if f.name in recipes.FIELDS else f.default
      assert f"(default: {default})" in action.help


def test_todays_flag_names_still_work():
  options = {o for a in train_parser()._actions for o in a.option_strings}
  assert set(OLD_FLAGS) <= options


def test_defaults_are_the_dataclass_defaults_and_aliases_set_the_same_field():
  args = train_parser().parse_args(["--out", "x"])
  cfg = build(args)
  assert (cfg["task"], cfg["model"], cfg["train"]) == (TaskConfig(), ModelConfig(), TrainConfig())
  for old, new in (["--layers", "--n-layers"], ["--heads", "--n-heads"]):
    a = build(train_parser().parse_args(["--out", "x", old, "3"]))
    b = build(train_parser().parse_args(["--out", "x", new, "3"]))
    assert a == b and a["model"] != ModelConfig()
  a = build(train_parser().parse_args(["--out", "x", "--output-proj", "--x-cov-diag", "1", "2", "--d", "2"]))
  assert a["model"].use_W_O and a["task"].x_cov == (1.0, 2.0) and a["model"].d == a["task"].d == 2
  m = build(train_parser().parse_args(["--out", "x", "--d", "2", "--x-cov", "2", "1", "1", "2"]))
  assert m["task"].x_cov == ((2.0, 1.0), (1.0, 2.0))  # d·d numbers: a matrix


def test_a_new_field_appears_on_the_command_line_by_itself():
  @dataclasses.dataclass(frozen=True)
  class Extra:
    temperature: float = 1.5  # softmax temperature
    tag: str | None = None  # free-form label
    fancy: bool = False  # turn the fancy thing on

  p = cli.Parser(prog="t")
  flags.add_config_flags(p, [Extra])
  cfg = build(p.parse_args(["--temperature", "2", "--tag", "a", "--fancy"]), {"x": Extra})["x"]
  assert cfg == Extra(2.0, "a", True)
  assert build(p.parse_args([]), {"x": Extra})["x"] == Extra()
  assert "softmax temperature" in p.format_help()
  with pytest.raises(cli.UsageError, match="--temperature: must be a finite number"):
    p.parse_args(["--temperature", "nan"])


def test_an_unsupported_annotation_is_a_loud_error():
  @dataclasses.dataclass(frozen=True)
  class Odd:
    table: dict = None  # no command-line form

  with pytest.raises(TypeError, match="table"):
    flags.add_config_flags(argparse.ArgumentParser(), [Odd])


def test_a_config_error_names_the_flag(capsys, tmp_path):
  assert cli.main(["train", "--layers", "0", "--out", str(tmp_path / "r")]) == 2
  err = capsys.readouterr().err
  assert err == "lintheory train: error: --n-layers/--layers: n_layers must be an integer >= 1, got 0\n"
  assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback_and_bugs_are_not_blamed_on_the_user(tmp_path, capsys, monkeypatch):
  from lintheory.run import rundir
  with pytest.raises(rundir.RunError, match="no such run directory"):
    cli.main(["analyze", str(tmp_path / "none"), "--debug"])

  def bug(args):
    raise TypeError("an internal mistake")
  monkeypatch.setattr(cli, "cmd_analyze", bug)
  monkeypatch.setattr(cli, "add_analyze", lambda sub, common: sub.add_parser("analyze", parents=[common])
                      .set_defaults(func=bug))
  assert cli.main(["analyze"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "TypeError: an internal mistake" in err and "--debug" in err


def test_help_exits_0_and_each_flag_has_its_own_text(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["train", "--help"])
  assert e.value.code == 0
  out = " ".join(capsys.readouterr().out.split())
  assert "--tail-scale TAIL_SCALE the largest demonstration scale" in out
  assert "L <= 2: float32; L >= 3: float64" in out and "L <= 2: 0.005" in out  # the recipes' defaults
  task, train_ = flags.field_comments(TaskConfig), flags.field_comments(TrainConfig)
  assert task["n_context_min"].endswith("0: all N") and "In-weights" not in task["n_context_min"]
  assert "fixed pool of P prompts" in train_["pool_size"]  # an aligned continuation line still continues

  @dataclasses.dataclass(frozen=True)
  class Sections:
    a: int = 0  # first text,
    #             continued
    # A section comment, not a's.
    b: int = 0  # b's own text
  assert flags.field_comments(Sections) == {"a": "first text, continued", "b": "b's own text"}


def test_studies_help_lists_the_studies_and_their_flags(capsys):
  from lintheory import studies
  from lintheory.studies.__main__ import main
  assert main(["--help"]) == 0
  out = capsys.readouterr().out
  assert all(name in out for name in studies.STUDIES) and "--profile" in out and "--cache-dir" in out
  assert main([]) == 2 and "--help" in capsys.readouterr().err


def test_a_study_flag_defaults_to_its_field_and_bools_have_a_no_form():
  from lintheory.studies import engine

  p = argparse.ArgumentParser()
  flags.add_dataclass_flags(p, engine.Flags)
  assert engine.Flags(**vars(p.parse_args([]))) == engine.Flags()
  got = engine.Flags(**vars(p.parse_args(["--seeds", "3", "--no-compile-cache", "--profile", "tiny"])))
  assert (got.seeds, got.compile_cache, got.profile) == (3, False, "tiny")
  helps = {a.dest: a.help for a in p._actions}
  assert helps["seeds"].startswith(flags.field_comments(engine.Flags)["seeds"]) and "(default 0)" in helps["seeds"]
  assert helps["results"] == flags.field_comments(engine.Flags)["results"]  # an empty default is not shown
