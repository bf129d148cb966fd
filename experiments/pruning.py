"""Entry point of the pruning study: `python experiments/pruning.py --profile default` (see lintheory.studies.pruning)."""

import sys

from lintheory.studies import engine

if __name__ == "__main__":
  sys.exit(engine.main("pruning"))
