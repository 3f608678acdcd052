"""Create the pipeline's topics (idempotent) and report what exists.

    python -m fraud_pipeline.topics [--bootstrap-servers ...]

Layout (override with the environment variables in brackets):

- payments: 6 partitions [PAYMENTS_PARTITIONS]: divides evenly among 1, 2 or
  3 detectors and puts two partition leaders on each of the three brokers;
- fraud_payments, legit_payments: 2 partitions, as the original tutorial [ROUTED_PARTITIONS];
- payments_dlq: 1 partition;
- fraud_rules: 1 partition, compacted (the live rules, keyed by rule id) [RULES_TOPIC];
- fraud_rules_rejected: 1 partition [RULES_REJECTED_TOPIC];
- all with replication factor 3 [TOPIC_REPLICATION_FACTOR] and
  min.insync.replicas=2 [TOPIC_MIN_INSYNC_REPLICAS].
"""

from __future__ import annotations

import sys

from .config import build_parser, settings_from_args
from .kafka_io import describe_topics, ensure_topics, pipeline_topics
from .runtime import PipelineError, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        "python -m fraud_pipeline.topics",
        "Create the pipeline's topics if they are missing and show each one's layout.",
        consumes=None,
    )
    settings = settings_from_args(parser.parse_args(argv))
    log = setup_logging("topics")
    specs = pipeline_topics(settings.topics)
    try:
        outcome = ensure_topics(settings, specs)
        layout = describe_topics(settings, [spec.name for spec in specs])
    except PipelineError as exc:
        log.error("%s", exc)
        return 1
    for spec in specs:
        partitions, replicas = layout.get(spec.name, (0, 0))
        print(f"{spec.name}: {outcome[spec.name]} ({partitions} partitions, replication factor {replicas}, "
              f"min.insync.replicas {spec.min_insync_replicas})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
