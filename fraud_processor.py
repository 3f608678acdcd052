"""fraud_processor: see `python fraud_processor.py --help` and the package module fraud_pipeline.processors."""

import sys

from fraud_pipeline.processors import fraud_main as run


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
