"""Command-line flags from frozen dataclasses: a field is a flag, its trailing comment the flag's help;
the argument types and range checks every command line uses.

One reader of the comments (field_comments) and one mapping of annotations to argparse types (kind)
serve `lintheory train`/`import` (add_config_flags: a flag left out leaves its field to a saved run or
the default, build_configs) and every study (add_dataclass_flags: the dataclass's defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
from pathlib import Path

INT_MAX = 2**31 - 1  # steps, seeds and sizes are int32 inside JAX programs


# --- argument types ------------------------------------------------------------------------


def int_arg(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
  if abs(v) > INT_MAX:
    raise argparse.ArgumentTypeError(f"must be an integer in [-{INT_MAX}, {INT_MAX}], got {text}")
  return v


def float_arg(text: str) -> float:
  try:
    v = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not math.isfinite(v):
    raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
  return v


def optional_str(text: str) -> str | None:
  return None if text.lower() == "none" else text


def in_range(flag: str, value: int, lo: int, hi: int) -> int:
  if not lo <= value <= hi:
    raise ValueError(f"{flag} must be an integer in [{lo}, {hi}], got {value}")
  return value


def out_dir(text: str, flag: str = "--out") -> Path:
  if not text or not text.strip():
    raise ValueError(f"{flag} must name a directory, got {text!r}")
  return Path(text)


# --- dataclass fields → flags --------------------------------------------------------------


def field_comments(cls) -> dict[str, str]:
  """field name → its trailing comment in the class source.

  A comment line whose text starts in the column of the field's comment text continues it; any
  other line (a section comment, the next field) ends it."""
  out, last, column = {}, None, None
  for line in inspect.getsource(cls).splitlines():
    m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)$", line)
    c = re.match(r"\s+#\s*(.*)$", line)
    if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
      last, column = m.group(1), m.start(2)
      out[last] = m.group(2).strip()
    elif last and c and c.group(1) and c.start(1) == column:
      out[last] += " " + c.group(1).strip()
    else:
      last = None
  return out


def flag_of(name: str) -> str:
  return "--" + name.replace("_", "-").lower()


def kind(f: dataclasses.Field) -> tuple[str, bool]:
  """('int'|'float'|'bool'|'str'|'tuple', optional) from a field's annotation (a string or a type)."""
  t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
  parts = [p.strip() for p in t.split("|")]
  optional = "None" in parts
  base = [p for p in parts if p != "None"][0]
  base = base.split("[")[0]
  if base not in ("int", "float", "bool", "str", "tuple"):
    raise TypeError(f"{f.name}: no command-line type for annotation {t!r}")
  return base, optional


def _add(p, f: dataclasses.Field, names: list[str], **kw) -> None:
  """One argument for field f, its type (or a --no- form for a bool) from the annotation."""
  base, optional = kind(f)
  if base == "bool":  # BooleanOptionalAction adds "--no-" forms of every name
    p.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
  elif base == "tuple":
    p.add_argument(*names, type=float_arg, nargs="+", metavar="X", **kw)
  else:
    typ = {"int": int_arg, "float": float_arg, "str": optional_str if optional else str}[base]
    p.add_argument(*names, type=typ, metavar=f.name.upper(), **kw)


def add_config_flags(p: argparse.ArgumentParser, classes, aliases: dict[str, tuple] | None = None,
                     defaults: dict[str, str] | None = None) -> dict[str, str]:
  """One flag per field of the dataclasses (a name shared by several is one flag); → dest per field.
  A flag left out sets nothing (build_configs takes the field from a saved run, else its default).

  defaults: the text --help gives as a field's default instead of its value (fields whose None
  stands for something else, such as the recipe for the model's depth)."""
  dests = {}
  for cls in classes:
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
      if f.name in dests:
        continue
      default = f.default if f.default is not dataclasses.MISSING else None
      help_ = f"{comments.get(f.name, f.name)} (default: {(defaults or {}).get(f.name, default)})"
      dests[f.name] = f"cfg_{f.name}"
      _add(p, f, [flag_of(f.name), *(aliases or {}).get(f.name, ())], dest=dests[f.name],
           default=argparse.SUPPRESS, help=help_)
  return dests


def add_dataclass_flags(p, cls) -> None:
  """One flag per field of a flat frozen dataclass, defaulting to the field's default."""
  comments = field_comments(cls)
  for f in dataclasses.fields(cls):
    help_ = comments.get(f.name, "")
    if kind(f)[0] != "bool" and f.default != "":  # an empty default's comment says what it means
      help_ += f" (default {f.default})"
    _add(p, f, [flag_of(f.name)], dest=f.name, default=f.default, help=help_ or None)


def naming(flags: dict[str, str], fn, *a, errors=(ValueError,), **kw):
  """fn(*a, **kw); an error whose message starts with a field's name (as dataclasses' checks do) is a
  ValueError prefixed with that field's flag in `flags` (field → flag)."""
  try:
    return fn(*a, **kw)
  except errors as e:
    flag = flags.get(str(e).split(" ", 1)[0])
    raise ValueError(f"{flag}: {e}" if flag else str(e)) from None


def build_configs(args, classes: dict, base: dict[str, dict] | None = None,
                  aliases: dict[str, tuple] | None = None) -> dict:
  """section → dataclass instance from the given flags, then `base` (a saved run), then defaults.
  A field's error is prefixed with its flags (and aliases)."""
  given = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
  out = {}
  for section, cls in classes.items():
    kw = dict((base or {}).get(section) or {})
    kw = {f.name: kw[f.name] for f in dataclasses.fields(cls) if f.name in kw}
    kw.update({f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given})
    for name, v in list(kw.items()):
      if isinstance(v, list):
        kw[name] = _as_cov(v, kw.get("d", given.get("d")))
    names = {f.name: "/".join([flag_of(f.name), *(aliases or {}).get(f.name, ())]) for f in dataclasses.fields(cls)}
    out[section] = naming(names, cls, errors=(TypeError, ValueError), **kw)
  return out


def _as_cov(values: list, d) -> tuple:
  """A flat list of d·d numbers is a matrix (row-major); anything else stays a diagonal."""
  if isinstance(d, int) and d > 1 and len(values) == d * d and all(not isinstance(v, list) for v in values):
    return tuple(tuple(values[i * d:(i + 1) * d]) for i in range(d))
  return tuple(tuple(v) if isinstance(v, list) else v for v in values)
