"""Figures from results files: results/<study>.csv → figures/<name>.png and .pdf.

Plotting never trains: every number drawn was written by a study. Redrawing gives the same bytes.
  python -m lintheory.plots --results results --figures figures [STUDY ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lintheory import studies
from lintheory.studies import engine


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--results", default="results", help="directory of the studies' results files")
  ap.add_argument("--figures", default="figures", help="output directory for PNG and PDF files")
  ap.add_argument("names", nargs="*", help=f"studies to draw (default: every one with results): {', '.join(studies.STUDIES)}")
  args = ap.parse_args(argv)
  unknown = [n for n in args.names if n not in studies.STUDIES]
  if unknown:
    ap.error(f"unknown studies {unknown}; choose from {', '.join(studies.STUDIES)}")
  names = args.names or [n for n in studies.STUDIES if (Path(args.results) / f"{n}.csv").exists()]
  if not names:
    print(f"plots: error: no results files in {args.results}", file=sys.stderr)
    return 2
  for name in names:
    try:
      table, meta = engine.load(args.results, name)
    except ValueError as e:
      print(f"plots: error: {e}", file=sys.stderr)
      return 2
    for p in engine.study_module(name).plot(table, meta, Path(args.figures)):
      print(p)
  return 0


if __name__ == "__main__":
  sys.exit(main())
