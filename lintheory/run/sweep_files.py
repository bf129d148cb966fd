"""A sweep on disk: its columns (one row per configuration × seed), the tidy CSV, the fingerprint of
the models it prunes, and the check of a directory a sweep resumes from (run/sweep.py writes them)."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lintheory.core.model import Params
from lintheory.run import io, tables

# --- rows, CSV, metadata -------------------------------------------------------------------

BASE_COLUMNS = ("seed", "layer", "module", "mode", "xi", "rank", "icl_error", "icl_error_se",
                "icl_error_median")
PER_LAYER = ("w_hat_rel", "w_hat_maxabs", "dW_norm", "G_norm")


def columns(n_layers: int, bound_keys=()) -> list[str]:
  cols = list(BASE_COLUMNS)
  for name in PER_LAYER:
    cols += [f"{name}_{t}" for t in range(n_layers)]
  return cols + sorted(bound_keys)


def row_key(row: dict) -> tuple:
  """(seed, layer, module, mode, value) identifying a row, from a parsed or a fresh row."""
  v = float(row["xi"]) if row["mode"] == "rate" else int(row["rank"])
  return int(row["seed"]), int(row["layer"]), row["module"], row["mode"], v


COLUMN_KINDS = {"module": str, "mode": str, "seed": int, "layer": int, "rank": int}  # every other column: float


def write_csv(path: Path, cols: list[str], rows: list[dict]) -> None:
  tables.write(path, cols, rows)


def read_csv(path) -> list[dict]:
  """Rows with numbers parsed (int for seed/layer/rank, float otherwise; '' → None)."""
  return tables.read(path, COLUMN_KINDS, float)[1]


def fingerprint(params_S: Params) -> str:
  h = hashlib.sha256()
  for name in sorted(params_S):
    a = np.ascontiguousarray(np.asarray(params_S[name]))
    h.update(name.encode() + str(a.shape).encode() + str(a.dtype).encode() + a.tobytes())
  return h.hexdigest()[:16]


class SweepResult(NamedTuple):
  rows: list[dict]  # one per configuration × seed, in configuration order
  meta: dict  # what sweep.json holds
  evaluated: int  # distinct configurations evaluated in this call (resumed ones excluded)
  seconds: float


# --- a sweep directory that already exists --------------------------------------------------

FILES = ("sweep.csv", "sweep.json", "provenance.json")  # all a sweep directory may hold
KEY_COLUMNS = ("seed", "layer", "module", "mode", "rank")  # never empty in a row a sweep wrote


def read_dir(out) -> tuple[dict | None, list[dict]]:
  """(sweep.json, the parsed rows of sweep.csv) in `out`, (None or sweep.json, []) without a CSV; a
  file no sweep wrote, or one cut short, is a ValueError naming it."""
  csv_path, json_path = Path(out) / "sweep.csv", Path(out) / "sweep.json"
  meta = None
  if json_path.exists():
    try:
      meta = io.read_json(json_path)
    except (OSError, ValueError) as e:
      raise ValueError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("columns"), list):
      raise ValueError(f"{json_path}: not a sweep description (no columns)")
  if not csv_path.exists():
    return meta, []
  if meta is None:
    raise ValueError(f"{csv_path}: no sweep.json beside it (a sweep interrupted in its first block, or a "
                     "removed file); pass --overwrite to start again")
  try:
    with open(csv_path, newline="") as f:
      table = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise ValueError(f"{csv_path}: cannot be read ({type(e).__name__}: {e})") from None
  if not table or table[0] != meta["columns"] or not set(KEY_COLUMNS) <= set(table[0]):
    raise ValueError(f"{csv_path}: its header differs from sweep.json's columns")
  key = [table[0].index(c) for c in KEY_COLUMNS]
  for i, row in enumerate(table[1:]):
    if len(row) != len(table[0]) or any(row[j] == "" for j in key):
      raise ValueError(f"{csv_path}: row {i + 2} is truncated or malformed")
  try:
    return meta, read_csv(csv_path)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{csv_path}: a value cannot be parsed ({e})") from None


def check_dir(out: Path, overwrite: bool, flag: str = "--out") -> None:
  """`out` is new, empty, or a sweep directory that can resume (read_dir); overwrite removes its files."""
  if out.exists() and not out.is_dir():
    raise ValueError(f"{flag} {out} exists and is not a directory")
  io.check_writable_dir(out, flag)
  if not out.exists():
    return
  names = {p.name for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))}
  if names - set(FILES):
    raise ValueError(f"{flag} {out} holds files a sweep does not write ({', '.join(sorted(names - set(FILES)))}); "
                     "refusing to write into it")
  if overwrite:
    for name in FILES:
      io.remove_tree(out / name)
  else:
    read_dir(out)


def summary(res: SweepResult, modules, full_rank: int, csv_path) -> list[str]:
  """What a sweep (written to csv_path) found: its size, the unpruned ICL error, and per module the configuration that
  leaves the least ICL error (configurations with a non-finite one are left out and counted)."""
  lines = [f"{csv_path}: {len(res.rows)} rows, {res.evaluated} configurations evaluated in {res.seconds:.1f} s "
           f"(bound columns: {'yes' if res.meta['bounds'] else 'no'})"]
  base = next((r["icl_error"] for r in res.rows if r["rank"] == full_rank and r["module"] in ("attn", "q", "k", "v")),
              None)
  if base is not None:
    lines.append(f"  unpruned ICL error (MSE/d) {base:.4f}")
  for m in modules:
    rs = [r for r in res.rows if r["module"] == m and r["icl_error"] is not None and math.isfinite(r["icl_error"])]
    n_bad = sum(1 for r in res.rows if r["module"] == m) - len(rs)
    if not rs:
      lines.append(f"  {m:>4}: no configuration has a finite ICL error")
      continue
    best = min(rs, key=lambda r: r["icl_error"])
    what = f"ξ={best['xi']}" if best["mode"] == "rate" else f"rank {best['rank']}"
    lines.append(f"  {m:>4}: best layer {best['layer']} at {what} (rank {best['rank']}): "
                 f"{best['icl_error']:.4f} ± {best['icl_error_se']:.4f}"
                 + (f" ({n_bad} configurations with a non-finite ICL error left out)" if n_bad else ""))
  return lines
