"""Entry point of the in_weights study: `python experiments/in_weights.py --profile default` (see lintheory.studies.in_weights)."""

import sys

from lintheory.studies import engine

if __name__ == "__main__":
  sys.exit(engine.main("in_weights"))
