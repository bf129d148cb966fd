"""python -m lintheory.studies NAME [--profile P] [--seeds S] [--results DIR] [--cache-dir DIR]"""

import sys

from lintheory import studies
from lintheory.studies import engine


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] not in studies.STUDIES:
    print(f"usage: python -m lintheory.studies {{{','.join(studies.STUDIES)}}} [--help]", file=sys.stderr)
    return 2
  return engine.main(argv[0], argv[1:])


if __name__ == "__main__":
  sys.exit(main())
