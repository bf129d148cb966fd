"""Entry point of the mismatch study: `python experiments/mismatch.py --profile default` (see lintheory.studies.mismatch)."""

import sys

from lintheory.studies import engine

if __name__ == "__main__":
  sys.exit(engine.main("mismatch"))
