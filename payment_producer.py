"""payment_producer: see `python payment_producer.py --help` and the package module fraud_pipeline.producer."""

import sys

from fraud_pipeline.producer import main as run


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
