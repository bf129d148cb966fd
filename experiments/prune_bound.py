"""Entry point of the prune_bound study: `python experiments/prune_bound.py --profile default` (see lintheory.studies.prune_bound)."""

import sys

from lintheory.studies import engine

if __name__ == "__main__":
  sys.exit(engine.main("prune_bound"))
