"""Entry point of the deep_recipes study: `python experiments/deep_recipes.py --profile default` (see lintheory.studies.deep_recipes)."""

import sys

from lintheory.studies import engine

if __name__ == "__main__":
  sys.exit(engine.main("deep_recipes"))
