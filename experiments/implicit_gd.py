"""Entry point of the implicit_gd study: `python experiments/implicit_gd.py --profile default` (see lintheory.studies.implicit_gd)."""

import sys

from lintheory.studies import engine

if __name__ == "__main__":
  sys.exit(engine.main("implicit_gd"))
