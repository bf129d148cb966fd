"""Entry point of the one_layer study: `python experiments/one_layer.py --profile default` (see lintheory.studies.one_layer)."""

import sys

from lintheory.studies import engine

if __name__ == "__main__":
  sys.exit(engine.main("one_layer"))
