"""Every failure a user can cause: exit 2, one line naming the argument or file, nothing written.

A generated table of bad inputs over the four commands (bad numbers per flag, bad files per file
kind × corruption kind, protected outputs), then kill-and-resume: `train` and `sweep` are killed at
every write point (fault injection) and a rerun must give the uninterrupted result, bit for bit, or
refuse with a clear message. Everything is tiny (d = 2, N = 4, L = 2, 4 steps, batch 8).
"""

import hashlib
import json
import shutil

import numpy as np
import pytest

from lintheory import cli
from lintheory.run import io, rundir

TRAIN = ["train", "--d", "2", "--n-context", "4", "--layers", "2", "--steps", "4", "--batch-size", "8",
         "--chunk", "2", "--checkpoint-every", "2", "--eval-tasks", "8"]
COMMANDS = {  # a command reading RUN and writing OUT, with everything small
    "analyze": ["analyze", "{run}", "--cache-dir", "{tmp}/cache", "--eval-tasks", "8", "--fit-steps", "2"],
    "prune": ["prune", "{run}", "--layer", "0", "--module", "v", "--rank", "1", "--eval-tasks", "8", "--out", "{out}"],
    "sweep": ["sweep", "{run}", "--modules", "v", "--rates", "0", "0.5", "--ranks", "0", "--block", "2",
              "--eval-tasks", "8", "--analysis-tasks", "4", "--no-bounds", "--out", "{out}"],
    "resume": TRAIN + ["--steps", "6", "--resume", "--out", "{run}"],
}
FILES = ("config.json", "params.npz", "metrics.json", "loss_curve.csv", "checkpoint.npz", "provenance.json")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """One trained run (4 steps, saved at step 2 and 4) every case copies."""
  out = tmp_path_factory.mktemp("base") / "run"
  assert cli.main(TRAIN + ["--out", str(out)]) == 0
  return out


def snapshot(root) -> dict:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
          for p in sorted(root.rglob("*"))}


def rehash(run) -> None:
  """Rewrite the manifest to match the files, so the content checks behind the checksums are reached."""
  m = json.loads((run / rundir.MANIFEST).read_text())
  m["files"] = {n: io.sha256_file(run / n) for n in m["files"] if (run / n).exists()}
  (run / rundir.MANIFEST).write_text(json.dumps(m))


def edit_npz(name, fn):
  def apply(run):
    with np.load(run / name) as f:
      arrays = {k: f[k] for k in f.files}
    (run / name).write_bytes(io.npz_bytes(fn(arrays) or arrays))
    rehash(run)
  return apply


def edit_json(name, fn):
  def apply(run):
    obj = json.loads((run / name).read_text())
    (run / name).write_text(json.dumps(fn(obj)))
    rehash(run)
  return apply


def raw(name, how, keep_manifest=True):
  def apply(run):
    f = run / name
    data = f.read_bytes()
    if how == "missing":
      f.unlink()
    else:
      f.write_bytes({"empty": b"", "truncated": data[: len(data) // 2],
                     "garbage": np.random.default_rng(0).bytes(257)}[how])
    if not keep_manifest:
      rehash(run)
  return apply


def _set(path, value):
  def fn(obj):
    d = obj
    for k in path[:-1]:
      d = d[k]
    if value is KeyError:
      del d[path[-1]]
    else:
      d[path[-1]] = value
    return obj
  return fn


def _param(name, fn):
  def f(arrays):
    arrays[name] = fn(arrays[name])
  return f


# --- bad files: every file kind × corruption kind, then contents behind valid checksums -------

BYTE_CASES = [(f"{name}-{how}", raw(name, how), name) for name in FILES for how in
              ("missing", "empty", "truncated", "garbage")]
BYTE_CASES += [(f"MANIFEST-{how}", raw(rundir.MANIFEST, how), rundir.MANIFEST)
               for how in ("missing", "empty", "truncated", "garbage")]

CONTENT_CASES = [
    ("params-nan", edit_npz("params.npz", _param("W_Q", lambda a: a * np.nan)), "W_Q holds"),
    ("params-inf", edit_npz("params.npz", _param("W_V", lambda a: np.full_like(a, np.inf))), "non-finite"),
    ("params-int32", edit_npz("params.npz", _param("W_K", lambda a: a.astype(np.int32))), "int32"),
    ("params-float64", edit_npz("params.npz", _param("W_K", lambda a: a.astype(np.float64))), "float64"),
    ("params-no-W_K", edit_npz("params.npz", lambda a: {k: v for k, v in a.items() if k != "W_K"}), "W_K missing"),
    ("params-extra", edit_npz("params.npz", lambda a: {**a, "W_O": a["W_Q"]}), "unexpected arrays"),
    ("params-3-layers", edit_npz("params.npz", lambda a: {k: np.concatenate([v, v[:1]]) for k, v in a.items()}),
     "shape (3, 3, 3)"),
    ("params-wrong-D", edit_npz("params.npz", lambda a: {k: v[:, :2, :2] for k, v in a.items()}), "shape (2, 2, 2)"),
    ("params-garbage", raw("params.npz", "garbage", keep_manifest=False), "params.npz: not a readable"),
    ("params-truncated", raw("params.npz", "truncated", keep_manifest=False), "params.npz: not a readable"),
    ("params-empty", raw("params.npz", "empty", keep_manifest=False), "params.npz: not a readable"),
    ("config-no-model", edit_json("config.json", _set(["model"], KeyError)), "'model' section is missing"),
    ("config-no-task", edit_json("config.json", _set(["task"], KeyError)), "'task' section is missing"),
    ("config-layers-0", edit_json("config.json", _set(["model", "n_layers"], 0)), "n_layers must"),
    ("config-unknown-field", edit_json("config.json", _set(["model", "colour"], 1)), "colour"),
    ("config-d-mismatch", edit_json("config.json", _set(["task", "d"], 3)), "differs from task d=3"),
    ("config-seed-huge", edit_json("config.json", _set(["seed"], 2**70)), "seed must"),
    ("config-train-bad", edit_json("config.json", _set(["train", "steps"], 0)), "steps must"),
    ("config-a-list", edit_json("config.json", lambda c: [c]), "expected a JSON object"),
    ("config-truncated", raw("config.json", "truncated", keep_manifest=False), "config.json: not valid JSON"),
    ("metrics-truncated", raw("metrics.json", "truncated", keep_manifest=False), "metrics.json: not valid JSON"),
    ("metrics-a-list", edit_json("metrics.json", lambda m: [m]), "metrics.json: expected a JSON object"),
]
CHECKPOINT_CASES = [
    ("checkpoint-truncated", raw("checkpoint.npz", "truncated", keep_manifest=False), "checkpoint.npz: not a readable"),
    ("checkpoint-arrays", edit_npz("checkpoint.npz", lambda a: {k: v for k, v in a.items() if k != "opt_1"}),
     "checkpoint.npz: holds"),
    ("checkpoint-step", edit_npz("checkpoint.npz", lambda a: {**a, "step": np.asarray(3)}), "checkpoint.npz: losses"),
    ("checkpoint-nan", edit_npz("checkpoint.npz", _param("opt_1", lambda a: a * np.nan)), "non-finite"),
    ("checkpoint-manifest-step", edit_json(rundir.MANIFEST, _set(["step"], 2)), "MANIFEST.json's step"),
]

FILE_TABLE = ([(cmd, cid, fn, match) for cmd in COMMANDS for cid, fn, match in BYTE_CASES
               if not (cmd != "resume" and cid.startswith("checkpoint"))]
              + [(cmd, cid, fn, match) for cmd in COMMANDS for cid, fn, match in CONTENT_CASES]
              + [("resume", cid, fn, match) for cid, fn, match in CHECKPOINT_CASES])


def argv_of(cmd, tmp, run, out):
  return [a.format(run=run, out=out, tmp=tmp) for a in COMMANDS[cmd]]


def expect_refusal(tmp_path, capsys, argv, match):
  before = snapshot(tmp_path)
  rc = cli.main(argv)
  err = capsys.readouterr().err
  lines = err.splitlines()
  assert rc == 2, err
  assert len(lines) == 1 and lines[0].startswith(f"lintheory {argv[0]}: error: "), err
  assert match in lines[0], err
  assert snapshot(tmp_path) == before  # nothing written, nothing repaired behind the user's back


@pytest.mark.parametrize("cmd,cid,corrupt,match", FILE_TABLE, ids=[f"{c}-{i}" for c, i, _, _ in FILE_TABLE])
def test_a_bad_file_is_refused_by_name(base, tmp_path, capsys, cmd, cid, corrupt, match):
  run = tmp_path / "run"
  shutil.copytree(base, run)
  corrupt(run)
  expect_refusal(tmp_path, capsys, argv_of(cmd, tmp_path, run, tmp_path / "out"), match)


# --- bad numbers per flag, protected outputs ---------------------------------------------------

BIG = str(2**70)
FLAG_TABLE = {
    "train": [
        (["--d", "0"], "--d"), (["--d", BIG], "--d"), (["--d", "abc"], "--d"), (["--d", "100000"], "--d"),
        (["--n-context", "0"], "--n-context"), (["--n-context", str(2**31 - 1)], "--n-context"),
        (["--layers", "0"], "--layers"), (["--layers", "1000000000"], "--layers"), (["--heads", "0"], "--heads"),
        (["--heads", "100000000"], "--heads"), (["--steps", "0"], "--steps"), (["--steps", str(2**40)], "--steps"),
        (["--batch-size", "0"], "--batch-size"), (["--batch-size", str(2**31 - 1)], "--batch-size"),
        (["--lr", "0"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "-1"], "--lr"),
        (["--warmup", "-1"], "--warmup"), (["--noise-std", "-1"], "--noise-std"),
        (["--noise-std", "nan"], "--noise-std"),
        (["--init-scale", "0"], "--init-scale"), (["--init-scale", "inf"], "--init-scale"),
        (["--seed", "-1"], "--seed"), (["--seed", BIG], "--seed"), (["--seed", str(2**31)], "--seed"),
        (["--eval-tasks", "0"], "--eval-tasks"), (["--eval-tasks", "10000000000"], "--eval-tasks"),
        (["--eval-tasks", str(2**31 - 1)], "--eval-tasks"), (["--max-skipped", "-1"], "--max-skipped"),
        (["--chunk", "0"], "--chunk"), (["--x-cov-diag", "1", "2", "3"], "x_cov"),
        (["--x-cov-diag", "-1", "1"], "x_cov"), (["--x-cov-diag", "nan", "1"], "--x-cov"),
        (["--w-cov", "-1", "1"], "--w-cov"),
        (["--dtype", "float16"], "--dtype"), (["--attention", "cosine"], "--attention"), (["--mlp", "gelu"], "--mlp"),
        (["--mlp-hidden", "-1"], "--mlp-hidden"), (["--schedule", "linear"], "--schedule"),
        (["--optimizer", "sgd"], "--optimizer"), (["--weight-decay", "-1"], "weight_decay"),
        (["--clip-norm", "-1"], "clip_norm"), (["--checkpoint-every", "0"], "--checkpoint-every"),
        (["--bogus"], "--bogus"), (["--out", ""], "--out"), (["--resume", "--overwrite"], "not allowed"),
    ],
    "analyze": [
        (["--eval-tasks", "1"], "--eval-tasks"), (["--eval-tasks", "10000000000"], "--eval-tasks"),
        (["--eval-tasks", str(2**31 - 1)], "--eval-tasks"), (["--eval-seed", "-1"], "--eval-seed"),
        (["--fit-steps", "0"], "--fit-steps"), (["--cache-dir", ""], "--cache-dir"),
    ],
    "prune": [
        (["--layer", "5"], "--layer: layer index"), (["--module", "o"], "--module: module 'o' is absent"),
        (["--rate", "1.0"], "--rate: xi"), (["--rate", "nan"], "--rate"),
        (["--rank", "99"], "--rank: rank"), (["--rank", "-1"], "--rank: rank"), (["--eval-tasks", "1"], "--eval-tasks"),
        (["--eval-tasks", "10000000000"], "--eval-tasks"), (["--eval-tasks", str(2**31 - 1)], "--eval-tasks"),
        (["--eval-seed", "-1"], "--eval-seed"), (["--out", ""], "--out"), (["--module", "x"], "--module"),
    ],
    "sweep": [
        (["--rates", "1.5"], "--rates"), (["--ranks", "-1"], "--ranks"), (["--layers", "9"], "--layers"),
        (["--block", "1"], "--block"), (["--eval-tasks", "1"], "--eval-tasks"),
        (["--eval-tasks", "10000000000"], "--eval-tasks"), (["--eval-tasks", str(2**31 - 1)], "--eval-tasks"),
        (["--analysis-tasks", "1"], "--analysis-tasks"), (["--out", ""], "--out"),
    ],
}
NUMBER_TABLE = [(cmd, flags, match) for cmd, rows in FLAG_TABLE.items() for flags, match in rows]


@pytest.mark.parametrize("cmd,flags,match", NUMBER_TABLE,
                         ids=[f"{c}{''.join(f[:2])}" for c, f, _ in NUMBER_TABLE])
def test_a_bad_number_is_refused_naming_the_flag(base, tmp_path, capsys, cmd, flags, match):
  run = tmp_path / "run"
  shutil.copytree(base, run)
  argv = (TRAIN + ["--out", str(tmp_path / "out")] if cmd == "train"
          else argv_of(cmd, tmp_path, run, tmp_path / "out"))
  if cmd == "prune" and ("--rate" in flags or "--rank" in flags):
    i = argv.index("--rank")
    del argv[i:i + 2]
  expect_refusal(tmp_path, capsys, argv + flags, match)


def _dir_of_someone_else(tmp):
  (tmp / "out").mkdir()
  (tmp / "out" / "notes.txt").write_text("mine")


def _a_file(tmp):
  (tmp / "out").write_text("a file")


def _a_run(tmp):
  shutil.copytree(tmp / "run", tmp / "out")


def _sweep_files(**files):
  def setup(tmp):
    (tmp / "out").mkdir()
    for name, text in files.items():
      (tmp / "out" / name.replace("_", ".")).write_text(text)
  return setup


def _pruned_run(tmp):
  assert cli.main(argv_of("prune", tmp, tmp / "run", tmp / "pruned")) == 0
  shutil.rmtree(tmp / "run")
  (tmp / "pruned").rename(tmp / "run")


NOTHING = lambda tmp: None  # noqa: E731
OUTPUT_TABLE = [
    ("train", NOTHING, ["--out", "{tmp}/run"], "--overwrite"),
    ("train", _dir_of_someone_else, ["--out", "{tmp}/out"], "not a lintheory run directory"),
    ("train", _dir_of_someone_else, ["--out", "{tmp}/out", "--overwrite"], "not a lintheory run directory"),
    ("train", _a_file, ["--out", "{tmp}/out"], "not a directory"),
    ("train", NOTHING, ["--out", "/proc/lintheory-run"], "cannot write"),
    ("train", NOTHING, ["--out", "{tmp}/none", "--resume"], "no such run directory"),
    ("train", NOTHING, ["--out", "{tmp}/run", "--resume", "--layers", "3"], "model.n_layers"),
    ("train", NOTHING, ["--out", "{tmp}/run", "--resume", "--lr", "0.01"], "train.lr"),
    ("train", NOTHING, ["--out", "{tmp}/run", "--resume", "--seed", "5"], "seed (saved 0, given 5)"),
    ("train", NOTHING, ["--out", "{tmp}/run", "--resume", "--batch-size", "16"], "train.batch_size"),
    ("train", NOTHING, ["--out", "{tmp}/run", "--resume", "--steps", "2"], "--steps 2 is below"),
    ("train", _pruned_run, ["--out", "{tmp}/run", "--resume"], "checkpoint.npz: missing"),
    ("prune", NOTHING, ["--out", "{tmp}/run"], "--out must differ"),
    ("prune", _a_run, [], "--overwrite"),
    ("prune", _a_file, [], "not a directory"),
    ("prune", _dir_of_someone_else, [], "not a lintheory run directory"),
    ("prune", _dir_of_someone_else, ["--overwrite"], "not a lintheory run directory"),
    ("prune", NOTHING, ["--out", "/proc/lintheory-run"], "cannot write"),
    ("analyze", lambda tmp: shutil.rmtree(tmp / "run"), [], "no such run directory"),
    ("analyze", _a_file, ["--cache-dir", "{tmp}/out"], "--cache-dir"),
    ("analyze", NOTHING, ["--cache-dir", "/proc/lintheory-cache"], "cannot write"),
    ("sweep", _a_file, [], "not a directory"),
    ("sweep", _dir_of_someone_else, [], "files a sweep does not write"),
    ("sweep", _dir_of_someone_else, ["--overwrite"], "files a sweep does not write"),
    ("sweep", _sweep_files(sweep_csv="seed,layer\n0,0\n"), [], "sweep.csv: no sweep.json"),
    ("sweep", _sweep_files(sweep_json="{\"colu"), [], "sweep.json: not valid JSON"),
    ("sweep", _sweep_files(sweep_json="{}", sweep_csv="a\n"), [], "sweep.json: not a sweep"),
    ("sweep", NOTHING, ["--out", "/proc/lintheory-sweep"], "cannot write"),
]


@pytest.mark.parametrize("cmd,setup,extra,match", OUTPUT_TABLE, ids=[f"{c}-{m[:24]}" for c, _, _, m in OUTPUT_TABLE])
def test_outputs_are_protected(base, tmp_path, capsys, cmd, setup, extra, match):
  shutil.copytree(base, tmp_path / "run")
  setup(tmp_path)
  argv = TRAIN if cmd == "train" else argv_of(cmd, tmp_path, tmp_path / "run", tmp_path / "out")
  expect_refusal(tmp_path, capsys, argv + [a.format(tmp=tmp_path) for a in extra], match)


def test_a_sweep_with_a_truncated_csv_is_refused(base, tmp_path, capsys):
  shutil.copytree(base, tmp_path / "run")
  argv = argv_of("sweep", tmp_path, tmp_path / "run", tmp_path / "out")
  assert cli.main(argv) == 0
  capsys.readouterr()
  csv = tmp_path / "out" / "sweep.csv"
  csv.write_bytes(csv.read_bytes()[:-40])
  expect_refusal(tmp_path, capsys, argv, "sweep.csv: row")


def test_the_table_is_large():
  assert len(FILE_TABLE) + len(NUMBER_TABLE) + len(OUTPUT_TABLE) >= 130


# --- kill and resume ---------------------------------------------------------------------------


class Killed(BaseException):
  """Stands for a kill: not an Exception, so neither the CLI nor a cleanup handler catches it."""


def kill_after(monkeypatch, k):
  """The k-th write point (a file written or a directory renamed) raises Killed."""
  count = [0]
  for name in ("atomic_write_bytes", "replace"):
    real = getattr(io, name)

    def fake(*a, _real=real, **kw):
      if count[0] == k:
        raise Killed
      count[0] += 1
      return _real(*a, **kw)
    monkeypatch.setattr(io, name, fake)
  return count


TRAIN_POINTS = 17  # save at step 2: 6 files + manifest + 1 rename; final save: 7 + 2 renames


def _kill_and_resume_train(base, tmp_path, monkeypatch, capsys, k):
  out = tmp_path / "run"
  with monkeypatch.context() as m:
    kill_after(m, k)
    with pytest.raises(Killed):
      cli.main(TRAIN + ["--out", str(out)])
  capsys.readouterr()
  rc = cli.main(TRAIN + ["--out", str(out), "--resume"])
  err = capsys.readouterr().err
  if rc == 2:  # killed before the first commit: nothing to resume, and it says so
    assert "no such run directory" in err and not out.exists()
    assert cli.main(TRAIN + ["--out", str(out)]) == 0  # a fresh run is not blocked by leftovers
  else:
    assert rc == 0, err
  for name in ("params.npz", "loss_curve.csv", "checkpoint.npz", "config.json"):
    assert (out / name).read_bytes() == (base / name).read_bytes(), name
  assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_train_write_points_are_counted(base, tmp_path, monkeypatch):
  count = kill_after(monkeypatch, 10**9)
  assert cli.main(TRAIN + ["--out", str(tmp_path / "run")]) == 0
  assert count[0] == TRAIN_POINTS
  for name in ("params.npz", "loss_curve.csv", "checkpoint.npz"):  # and a rerun is the same bytes
    assert (tmp_path / "run" / name).read_bytes() == (base / name).read_bytes(), name


@pytest.mark.parametrize("k", [3, 7, 16])  # inside the first save, its rename, the final swap
def test_train_killed_then_resumed_is_bit_identical(base, tmp_path, monkeypatch, capsys, k):
  _kill_and_resume_train(base, tmp_path, monkeypatch, capsys, k)


@pytest.mark.slow
@pytest.mark.parametrize("k", sorted(set(range(TRAIN_POINTS)) - {3, 7, 16}))
def test_train_killed_at_every_write_point_then_resumed(base, tmp_path, monkeypatch, capsys, k):
  _kill_and_resume_train(base, tmp_path, monkeypatch, capsys, k)


@pytest.fixture(scope="module")
def sweep_reference(base, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("sweep")
  assert cli.main(argv_of("sweep", tmp, base, tmp / "out")) == 0
  return (tmp / "out" / "sweep.csv").read_bytes()


SWEEP_POINTS = 11  # provenance.json, sweep.csv and sweep.json after each of 4 blocks (2 layers × 2 ranks, one per block), and once complete


def test_sweep_write_points_are_counted(base, tmp_path, monkeypatch, sweep_reference):
  count = kill_after(monkeypatch, 10**9)
  assert cli.main(argv_of("sweep", tmp_path, base, tmp_path / "out")) == 0
  assert count[0] == SWEEP_POINTS and (tmp_path / "out" / "sweep.csv").read_bytes() == sweep_reference


@pytest.mark.parametrize("k", range(SWEEP_POINTS))
def test_sweep_killed_then_rerun_is_identical_or_refused(base, tmp_path, monkeypatch, capsys, sweep_reference, k):
  argv = argv_of("sweep", tmp_path, base, tmp_path / "out")
  with monkeypatch.context() as m:
    kill_after(m, k)
    with pytest.raises(Killed):
      cli.main(argv)
  capsys.readouterr()
  rc = cli.main(argv)
  err = capsys.readouterr().err
  if rc == 2:  # sweep.csv of the first block without its sweep.json: refused, by name
    assert "sweep.csv: no sweep.json" in err and "--overwrite" in err
    assert cli.main(argv + ["--overwrite"]) == 0
  else:
    assert rc == 0, err
  assert (tmp_path / "out" / "sweep.csv").read_bytes() == sweep_reference
  assert json.loads((tmp_path / "out" / "sweep.json").read_text())["complete"] is True


def test_a_model_that_overflows_is_not_written_by_prune_and_has_no_best_in_a_sweep(base, tmp_path, capsys):
  run = tmp_path / "run"
  shutil.copytree(base, run)
  edit_npz("params.npz", lambda a: {k: np.full_like(v, 1e30) for k, v in a.items()})(run)  # finite, overflows
  expect_refusal(tmp_path, capsys, argv_of("prune", tmp_path, run, tmp_path / "out"), "is not finite")
  assert cli.main(argv_of("sweep", tmp_path, run, tmp_path / "sw")) == 0
  out = capsys.readouterr().out
  assert "no configuration has a finite ICL error" in out and "best" not in out
