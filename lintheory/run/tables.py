"""Tidy CSV tables: the one codec of the studies' results (studies.engine.Table) and the sweeps (run.sweep).

A cell is written in a form that reads back exactly: a float as its shortest round-trip repr, an integer
as digits, a bool as true/false, None as the empty cell. Reading infers each cell's type back (empty →
None, true/false, int, float, else text) unless the caller names a column's type.
"""

from __future__ import annotations

import csv
import io as _io
import os
from typing import Any, Callable, Iterable

import numpy as np

from lintheory.run import io


def cell(v: Any) -> str:
  if v is None:
    return ""
  if isinstance(v, (bool, np.bool_)):
    return "true" if v else "false"
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  if isinstance(v, (float, np.floating)):
    return repr(float(v))  # shortest round-trip form: the CSV holds the exact float
  return str(v)


def parse(v: str, kind: Callable[[str], Any] | None = None) -> Any:
  """A cell back as a value: of type `kind` where given (str keeps an empty cell as ""), else inferred."""
  if kind is str:
    return v
  if v == "":
    return None
  if kind is not None:
    return kind(v)
  if v in ("true", "false"):
    return v == "true"
  for k in (int, float):
    try:
      return k(v)
    except ValueError:
      pass
  return v


def to_csv(cols: Iterable[str], rows: Iterable[dict]) -> str:
  """A header, then one line per row (a column the row lacks is an empty cell)."""
  cols = list(cols)
  buf = _io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(cols)
  for r in rows:
    w.writerow([cell(r.get(c)) for c in cols])
  return buf.getvalue()


def from_csv(text: str, kinds: dict[str, Callable] | None = None,
             default: Callable | None = None) -> tuple[list[str], list[dict]]:
  """(the header, the rows as dicts), each cell parsed with kinds[column] (default for the other columns;
  None infers); ValueError names a line whose number of cells differs from the header's."""
  reader = csv.reader(_io.StringIO(text))
  cols = next(reader, [])
  kinds = kinds or {}
  rows = []
  for line in reader:
    if not line:
      continue
    if len(line) != len(cols):
      raise ValueError(f"line {reader.line_num} has {len(line)} cells, the header {len(cols)}")
    rows.append({c: parse(v, kinds.get(c, default)) for c, v in zip(cols, line)})
  return cols, rows


def write(path: str | os.PathLike, cols: Iterable[str], rows: Iterable[dict]) -> None:
  io.atomic_write_bytes(path, to_csv(cols, rows).encode())


def read(path: str | os.PathLike, kinds: dict[str, Callable] | None = None,
         default: Callable | None = None) -> tuple[list[str], list[dict]]:
  with open(path, newline="") as f:
    return from_csv(f.read(), kinds, default)
