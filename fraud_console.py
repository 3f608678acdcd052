"""fraud_console: see `python fraud_console.py --help` and the package fraud_pipeline.console."""

import sys

from fraud_pipeline.console import main as run


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
