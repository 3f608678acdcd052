"""legit_processor: see `python legit_processor.py --help` and the package module fraud_pipeline.processors."""

import sys

from fraud_pipeline.processors import legit_main as run


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
