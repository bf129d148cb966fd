"""Figures from results files: results/<study>.csv → figures/<name>.png and .pdf.

Plotting never trains: every number drawn was written by a study. Redrawing gives the same bytes.
  python -m lintheory.plots [--profile P] [--results DIR] [--figures DIR] [STUDY ...]
A profile other than `default` reads results/P/ and draws into figures/P/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lintheory import studies
from lintheory.studies import engine
from lintheory.run import runtime


def main(argv=None) -> int:
  runtime.configure()  # before JAX's first computation
  ap = engine.results_parser(__doc__, "draw")
  ap.add_argument("--figures", default=None, help="output directory for PNG and PDF files (default: figures/ for the "
                  "default profile, figures/PROFILE/ otherwise)")
  ap.add_argument("names", nargs="*", help=f"studies to draw (default: every one with results): {', '.join(studies.STUDIES)}")
  args = ap.parse_args(argv)
  unknown = [n for n in args.names if n not in studies.STUDIES]
  if unknown:
    ap.error(f"unknown studies {unknown}; choose from {', '.join(studies.STUDIES)}")
  results = engine.results_of(args)
  names = args.names or [n for n in studies.STUDIES if (results / f"{n}.csv").exists()]
  if not names:
    print(f"plots: error: no results files in {results}", file=sys.stderr)
    return 2
  try:
    loaded = {name: engine.load(results, name) for name in names}
    held = engine.checked_profile(loaded, results, args.profile)
  except ValueError as e:
    print(f"plots: error: {e}", file=sys.stderr)
    return 2
  figures = Path(args.figures) if args.figures else engine.figures_dir(held)
  for name, (table, meta) in loaded.items():
    for p in engine.view_module(name).plot(table, meta, figures):
      print(p)
  return 0


if __name__ == "__main__":
  sys.exit(main())
