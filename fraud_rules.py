"""fraud_rules: see `python fraud_rules.py --help` and the package module fraud_pipeline.rules_cli."""

import sys

from fraud_pipeline.rules_cli import main as run


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
