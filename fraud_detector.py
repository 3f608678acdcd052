"""fraud_detector: see `python fraud_detector.py --help` and the package module fraud_pipeline.detector."""

import sys

from fraud_pipeline.detector import main as run


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
