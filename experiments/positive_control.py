"""Entry point of the positive_control study: `python experiments/positive_control.py --profile default` (see lintheory.studies.positive_control)."""

import sys

from lintheory.studies import engine

if __name__ == "__main__":
  sys.exit(engine.main("positive_control"))
