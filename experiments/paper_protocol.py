"""Entry point of the paper_protocol study: `python experiments/paper_protocol.py --profile default` (see lintheory.studies.paper_protocol)."""

import sys

from lintheory.studies import engine

if __name__ == "__main__":
  sys.exit(engine.main("paper_protocol"))
