"""One frozen configuration in sections, built from defaults, then the environment, then flags.

The defaults are the original tutorial's: brokers on localhost:9091-9093 and
the topics ``payments``, ``fraud_payments`` and ``legit_payments``.

:class:`Settings` is made of sections, one per group of flags: ``connection``
and ``topics`` in every script; ``consumer``, ``producer``, ``delivery``,
``detector``, ``processor`` and ``metrics`` only in the scripts that add those
flags (None in the others: the producer has no consumer section). Each
default is written once, as the default of its dataclass field; the flags
take their defaults from there (or from the environment variable that
overrides it), and each section is built from its own flags only.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar, cast

from . import security as security_settings
from .clients import CLIENTS, KAFKA_PYTHON
from .errors import ConfigError
from .security import Security

DEFAULT_BOOTSTRAP_SERVERS = "localhost:9091,localhost:9092,localhost:9093"
EXACTLY_ONCE: Final = "exactly-once"
AT_LEAST_ONCE: Final = "at-least-once"
ClientName = Literal["kafka-python", "confluent"]
"""The client libraries behind the seam (fraud_pipeline.clients.CLIENTS)."""
Guarantee = Literal["exactly-once", "at-least-once"]
"""The detector's delivery guarantees."""
GUARANTEES = (EXACTLY_ONCE, AT_LEAST_ONCE)

S = TypeVar("S")


def bootstrap_servers(text: str) -> tuple[str, ...]:
    """The ``host:port`` entries of a comma-separated list; ConfigError if there are none."""
    servers = tuple(s.strip() for s in text.split(",") if s.strip())
    if not servers:
        raise ConfigError("--bootstrap-servers is empty")
    return servers


@dataclass(frozen=True)
class ConnectionSettings:
    """How every client of a process reaches the cluster."""

    bootstrap_servers: tuple[str, ...] = bootstrap_servers(DEFAULT_BOOTSTRAP_SERVERS)
    """Kafka brokers to bootstrap from, ``host:port``."""
    client: ClientName = KAFKA_PYTHON
    """Client library: ``kafka-python`` (the tutorial's) or ``confluent`` (librdkafka)."""
    security: Security = field(default_factory=Security)
    """TLS and SASL settings of every connection (fraud_pipeline.security); PLAINTEXT by default."""


@dataclass(frozen=True)
class TopicSettings:
    """Names and layout of the pipeline's topics."""

    payments: str = "payments"
    """Incoming payments, written by the producer."""
    fraud: str = "fraud_payments"
    """Payments the detector judged suspicious."""
    legit: str = "legit_payments"
    """Payments the detector let through."""
    dead_letter: str = "payments_dlq"
    """Records no stage could read, kept byte for byte with the reason in headers."""
    rules: str = "fraud_rules"
    """Compacted: the live fraud rules, one record per rule keyed by its id (a tombstone removes it)."""
    rules_rejected: str = "fraud_rules_rejected"
    """Rule and list records the detector refused, with the reason in headers."""
    lists: str = "fraud_lists"
    """Compacted: the entries of the block, review, allow, watch and snooze lists, one record per entry (fraud_pipeline.rules.lists)."""
    list_definitions: str = "fraud_list_definitions"
    """Compacted: the lists themselves (name, field, level), one record per list; the rules admin's alone to write."""
    labels: str = "fraud_labels"
    """Compacted: the analysts' verdicts on reviewed payments, keyed by payment id (fraud_pipeline.cases)."""
    audit: str = "fraud_audit"
    """Everything analysts do in the console, one record per action (fraud_pipeline.cases)."""
    claims: str = "fraud_claims"
    """Compacted: which analyst holds each case, for every console (fraud_pipeline.claims)."""
    proposals: str = "fraud_rule_proposals"
    """Compacted: proposed rule changes with their evidence and decision, keyed by id (fraud_pipeline.proposals)."""
    payments_partitions: int = 6
    """6 divides evenly among 1, 2 or 3 detectors and puts 2 leaders on each broker."""
    routed_partitions: int = 2
    """Partitions of the fraud and legit topics, as in the original tutorial."""
    dead_letter_partitions: int = 1
    """Dead letters are few: one partition keeps them in arrival order."""
    replication_factor: int = 3
    """Copies of each partition; 3 on the 3-broker cluster."""
    min_insync_replicas: int = 2
    """Replicas that must have a write before ``acks=all`` succeeds."""


@dataclass(frozen=True)
class ConsumerSettings:
    """A consuming stage (detector, processors): its group, when it commits, when it stops, what it prints."""

    group_id: str | None
    """Consumer group of this process."""
    idle_timeout_s: float | None = None
    """Exit after this many seconds without a message; None runs forever."""
    commit_interval_ms: int = 100
    """Output and offsets are committed (one transaction, exactly-once) at most this often; as Kafka Streams' exactly-once default."""
    commit_records: int = 10_000
    """... or as soon as this many records are pending."""
    quiet: bool = False
    """Drop the per-message lines; the closing summary is still printed."""


@dataclass(frozen=True)
class ProducerSettings:
    """The payment producer's stream: how many, how fast, from what."""

    count: int | None = None
    """Payments to send; None sends forever."""
    rate: float = 1.0
    """Payments per second; 0 sends as fast as possible."""
    seed: int | None = None
    """Seed for a reproducible stream; None for a random one."""
    accounts: int = 1000
    """How many sender accounts the stream draws from."""
    scenarios: str = "none"
    """Mix of labelled fraud scenarios to inject (see fraud_pipeline.scenarios); "none": the original stream."""
    quiet: bool = False
    """Do not print each payment; the closing summary is still printed."""


@dataclass(frozen=True)
class DeliverySettings:
    """The detector's delivery guarantee; the processors are at-least-once and have no such section."""

    guarantee: Guarantee = EXACTLY_ONCE
    """``exactly-once`` (Kafka transactions) or ``at-least-once``."""
    transactional_id: str | None = None
    """Exactly-once: the producer's transactional id; None derives a stable one per host and slot."""
    linger_ms: int = 5
    """How long the producer of the routed records waits to fill a batch (``linger.ms``): latency against throughput."""
    trace_transactions: bool = False
    """Exactly-once: log each transaction's steps (begun, first record sent and acknowledged, committing with its
    offsets, its end)."""


@dataclass(frozen=True)
class DetectorSettings:
    """The detector's rules."""

    rules_file: str | None = None
    """Rule set file (JSON or YAML) the rules topic applies on top of; None: the original BITCOIN rule."""
    state_dir: str = "state"
    """Where the local stores of the rules' state live, one per input partition (fraud_pipeline.state)."""


@dataclass(frozen=True)
class ProcessorSettings:
    """The fraud processor's output."""

    reasons: bool = True
    """Print the decision's reasons after the original line."""


@dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus endpoint of a long-running script (fraud_pipeline.metrics)."""

    port: int = 0
    """Serve Prometheus metrics on this port; 0: off."""
    host: str = "127.0.0.1"
    """Address the metrics server binds."""


@dataclass(frozen=True)
class Settings:
    """Everything a pipeline process needs to know, fixed at start-up: a section per group of its flags."""

    connection: ConnectionSettings = field(default_factory=ConnectionSettings)
    """Brokers, client library and security."""
    topics: TopicSettings = field(default_factory=TopicSettings)
    """Topic names and layout."""
    create_topics: bool = True
    """Create missing topics at start-up (existing ones are left as they are)."""
    consumer: ConsumerSettings | None = None
    """Consuming stages only (detector, processors)."""
    producer: ProducerSettings | None = None
    """The payment producer only."""
    delivery: DeliverySettings | None = None
    """The detector only: its stage follows this guarantee; a stage without it is at-least-once."""
    detector: DetectorSettings | None = None
    """The detector only."""
    processor: ProcessorSettings | None = None
    """The fraud processor only."""
    metrics: MetricsSettings | None = None
    """Long-running scripts only (producer, detector, processors); None: no metrics."""


def require(section: S | None, name: str) -> S:
    """A section the caller cannot work without; ValueError if these settings were made without its flags."""
    if section is None:
        raise ValueError(f"the settings have no {name} section: the script did not add its flags")
    return section


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def _chosen(value: str, env_name: str, choices: tuple[str, ...]) -> str:
    """A parsed flag of a few choices. argparse checks the value a flag was given, not a default taken from the
    environment: a value outside the choices can only have come from ``env_name``."""
    if value not in choices:
        raise ConfigError(f"environment variable {env_name}={value!r}: one of {', '.join(choices)}")
    return value


def _env_non_negative_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _env_int(env, name, default)
    if value < 0:
        raise ConfigError(f"environment variable {name}={value} must be 0 or more")
    return value


def topic_settings_from_env(env: Mapping[str, str] | None = None) -> TopicSettings:
    """Topic names and layout from the environment, with the original's defaults; ConfigError for a count that is not a number."""
    env = os.environ if env is None else env
    base = TopicSettings()
    return TopicSettings(
        payments=env.get("PAYMENTS_TOPIC") or base.payments,
        fraud=env.get("FRAUD_TOPIC") or base.fraud,
        legit=env.get("LEGIT_TOPIC") or base.legit,
        dead_letter=env.get("DEAD_LETTER_TOPIC") or base.dead_letter,
        rules=env.get("RULES_TOPIC") or base.rules,
        rules_rejected=env.get("RULES_REJECTED_TOPIC") or base.rules_rejected,
        lists=env.get("LISTS_TOPIC") or base.lists,
        list_definitions=env.get("LIST_DEFINITIONS_TOPIC") or base.list_definitions,
        labels=env.get("LABELS_TOPIC") or base.labels,
        audit=env.get("AUDIT_TOPIC") or base.audit,
        claims=env.get("CLAIMS_TOPIC") or base.claims,
        proposals=env.get("PROPOSALS_TOPIC") or base.proposals,
        payments_partitions=_env_int(env, "PAYMENTS_PARTITIONS", base.payments_partitions),
        routed_partitions=_env_int(env, "ROUTED_PARTITIONS", base.routed_partitions),
        replication_factor=_env_int(env, "TOPIC_REPLICATION_FACTOR", base.replication_factor),
        min_insync_replicas=_env_int(env, "TOPIC_MIN_INSYNC_REPLICAS", base.min_insync_replicas),
    )


def _at_least_zero(kind: Callable[[str], float], *, zero_ok: bool) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float) that must be > 0, or >= 0 when ``zero_ok``."""

    def parse(text: str) -> float:
        value = kind(text)
        if value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be {'>=' if zero_ok else '>'} 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return parse


positive_float = _at_least_zero(float, zero_ok=False)
non_negative_float = _at_least_zero(float, zero_ok=True)
non_negative_int = _at_least_zero(int, zero_ok=True)
positive_int = _at_least_zero(int, zero_ok=False)


def _makes_section(parser: argparse.ArgumentParser, name: str) -> None:
    """Record that ``parser``'s flags make the optional section ``name`` of Settings (``settings_sections``, for settings_from_args)."""
    parser.set_defaults(settings_sections=(*(parser.get_default("settings_sections") or ()), name))


def add_connection_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> argparse._ArgumentGroup:
    """--client, --bootstrap-servers and the security flags, which connection_settings reads; returns the "Kafka" group."""
    group = parser.add_argument_group("Kafka")
    group.add_argument(
        "--client", choices=CLIENTS, default=env.get("KAFKA_CLIENT") or ConnectionSettings.client,
        help="Kafka client library: kafka-python (pure Python, the tutorial's) or confluent (confluent-kafka on librdkafka, "
        "several times faster); both give the same guarantees [env KAFKA_CLIENT] (default: %(default)s)",
    )
    group.add_argument(
        "--bootstrap-servers", default=None,
        help="comma-separated host:port list [env KAFKA_BOOTSTRAP_SERVERS] (default: the client config file's, "
        f"else {env.get('KAFKA_BOOTSTRAP_SERVERS') or DEFAULT_BOOTSTRAP_SERVERS})",
    )
    security_settings.add_arguments(parser.add_argument_group("security (TLS and SASL)"), env)
    return group


def _add_topic_arguments(kafka: argparse._ArgumentGroup, env: Mapping[str, str]) -> None:
    """The topic names (over the environment, over TopicSettings) and --no-create-topics, in the "Kafka" group."""
    topics = topic_settings_from_env(env)
    kafka.add_argument("--payments-topic", default=topics.payments, help="incoming payments [env PAYMENTS_TOPIC] (default: %(default)s)")
    kafka.add_argument("--fraud-topic", default=topics.fraud, help="suspicious payments [env FRAUD_TOPIC] (default: %(default)s)")
    kafka.add_argument("--legit-topic", default=topics.legit, help="legitimate payments [env LEGIT_TOPIC] (default: %(default)s)")
    kafka.add_argument(
        "--dead-letter-topic", default=topics.dead_letter,
        help="unreadable records, kept byte for byte [env DEAD_LETTER_TOPIC] (default: %(default)s)",
    )
    kafka.add_argument(
        "--rules-topic", default=topics.rules,
        help="compacted topic of live fraud rules [env RULES_TOPIC] (default: %(default)s)",
    )
    kafka.add_argument(
        "--rules-rejected-topic", default=topics.rules_rejected,
        help="rule and list records the detector refused, with the reason [env RULES_REJECTED_TOPIC] (default: %(default)s)",
    )
    kafka.add_argument(
        "--lists-topic", default=topics.lists,
        help="compacted topic of the lists' entries [env LISTS_TOPIC] (default: %(default)s)",
    )
    kafka.add_argument(
        "--list-definitions-topic", default=topics.list_definitions,
        help="compacted topic of the block, review, allow and watch lists themselves, written by the rules admin "
             "[env LIST_DEFINITIONS_TOPIC] (default: %(default)s)",
    )
    kafka.add_argument(
        "--labels-topic", default=topics.labels,
        help="compacted topic of the analysts' verdicts [env LABELS_TOPIC] (default: %(default)s)",
    )
    kafka.add_argument(
        "--audit-topic", default=topics.audit, help="what analysts do in the console [env AUDIT_TOPIC] (default: %(default)s)",
    )
    kafka.add_argument(
        "--claims-topic", default=topics.claims,
        help="compacted topic of who holds each case, shared by the consoles [env CLAIMS_TOPIC] (default: %(default)s)",
    )
    kafka.add_argument(
        "--proposals-topic", default=topics.proposals,
        help="compacted topic of proposed rule changes, their evidence and decisions [env PROPOSALS_TOPIC] "
        "(default: %(default)s)",
    )
    kafka.add_argument(
        "--no-create-topics", dest="create_topics", action="store_false", default=Settings.create_topics,
        help="do not create missing topics at start-up",
    )


def add_metrics_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """``--metrics-port`` and ``--metrics-host`` of a long-running script: the ``metrics`` section."""
    _makes_section(parser, "metrics")
    observe = parser.add_argument_group("metrics")
    observe.add_argument(
        "--metrics-port", type=non_negative_int, default=_env_non_negative_int(env, "METRICS_PORT", MetricsSettings.port),
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics; 0 is off [env METRICS_PORT] (default: %(default)s)",
    )
    observe.add_argument(
        "--metrics-host", default=env.get("METRICS_HOST") or MetricsSettings.host, metavar="HOST",
        help="address the metrics server binds; 0.0.0.0 for every interface [env METRICS_HOST] (default: %(default)s)",
    )


def add_consumer_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str], consumes: str, default_group: str | None) -> None:
    """The flags of a consuming stage, reading ``consumes`` in ``default_group``: the ``consumer`` section."""
    _makes_section(parser, "consumer")
    group_env = (default_group or "").upper().replace("-", "_") + "_GROUP_ID"
    run = parser.add_argument_group("consumer")
    run.add_argument(
        "--group-id", default=env.get(group_env) or default_group,
        help=f"consumer group reading {consumes}; a new group starts from the earliest offset [env {group_env}] (default: %(default)s)",
    )
    run.add_argument(
        "--idle-timeout", type=positive_float, default=ConsumerSettings.idle_timeout_s, metavar="S",
        help="exit 0 after S seconds without a message while partitions are assigned (default: run forever)",
    )
    run.add_argument("--quiet", action="store_true", default=ConsumerSettings.quiet, help="no per-message lines, only the closing summary")
    run.add_argument(
        "--commit-interval-ms", type=non_negative_int,
        default=_env_non_negative_int(env, "COMMIT_INTERVAL_MS", ConsumerSettings.commit_interval_ms), metavar="MS",
        help="commit output and offsets (exactly-once: one transaction) every MS milliseconds, or at "
        f"{ConsumerSettings.commit_records} pending records; lines are printed when their records commit; 0 commits every poll "
        "[env COMMIT_INTERVAL_MS] (default: %(default)s)",
    )


def add_delivery_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The detector's --guarantee, --transactional-id and --linger-ms: the ``delivery`` section."""
    _makes_section(parser, "delivery")
    delivery = parser.add_argument_group("delivery")
    delivery.add_argument(
        "--guarantee", choices=GUARANTEES,
        default=env.get("DETECTOR_GUARANTEE") or DeliverySettings.guarantee,
        help="exactly-once: the routed records and input offsets of each commit interval are committed in one Kafka "
        "transaction, so every payment reaches fraud or legit exactly once for read_committed readers, even "
        "across crashes. at-least-once: output is flushed, then offsets are committed; a crash may route a "
        "payment twice, never zero times [env DETECTOR_GUARANTEE] (default: %(default)s)",
    )
    delivery.add_argument(
        "--transactional-id", default=env.get("DETECTOR_TRANSACTIONAL_ID") or DeliverySettings.transactional_id,
        help="exactly-once: the producer's transactional id; give each detector instance its own and keep it "
        "across restarts so a restart fences its predecessor [env DETECTOR_TRANSACTIONAL_ID] "
        "(default: <group>-<host>-<n>, n the lowest slot free on this host)",
    )
    delivery.add_argument(
        "--linger-ms", type=non_negative_int, default=_env_non_negative_int(env, "DETECTOR_LINGER_MS", DeliverySettings.linger_ms),
        metavar="MS",
        help="how long the producer of routed records waits to fill a batch (linger.ms): each payment waits up to "
        "this long when payments are few; with a backlog, longer batches route more per second (docs/performance.md, "
        "\"Batching\") [env DETECTOR_LINGER_MS] (default: %(default)s)",
    )
    delivery.add_argument(
        "--trace-transactions", action="store_true", default=DeliverySettings.trace_transactions,
        help="exactly-once: log a line at each step of each transaction (begun, first record sent, first record "
        "acknowledged, committing with its input offsets, ending once its records are flushed and offsets added, "
        "committed or aborted) under fraud_pipeline.transactions; "
        "to tell where a crash fell",
    )


def add_detector_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The detector's --rules: the ``detector`` section."""
    _makes_section(parser, "detector")
    rules = parser.add_argument_group("rules")
    rules.add_argument(
        "--rules", dest="rules_file", default=env.get("DETECTOR_RULES") or DetectorSettings.rules_file, metavar="FILE",
        help="rule set file, JSON or YAML, validated at start; the rules published to the rules topic apply on top "
        "of it, without a restart. fraud_pipeline/rules/sets/recommended.yaml is the recommended set "
        "[env DETECTOR_RULES] (default: the original rule, BITCOIN is fraud)",
    )
    rules.add_argument(
        "--state-dir", default=env.get("STATE_DIR") or DetectorSettings.state_dir, metavar="DIR",
        help="folder of the local state stores (RocksDB, one per input partition, under DIR/GROUP/); losing it "
        "costs a restore from the changelog topic, nothing else [env STATE_DIR] (default: %(default)s)",
    )


def add_producer_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The payment producer's flags: the ``producer`` section."""
    _makes_section(parser, "producer")
    run = parser.add_argument_group("producer")
    run.add_argument("--count", type=non_negative_int, default=ProducerSettings.count, metavar="N",
                     help="send N payments, then exit (default: forever)")
    run.add_argument("--rate", type=non_negative_float, default=ProducerSettings.rate, metavar="R",
                     help="payments per second; 0 sends as fast as possible (default: %(default)s)")
    run.add_argument("--seed", type=int, default=ProducerSettings.seed, metavar="S",
                     help="seed for a reproducible stream of payments (default: random)")
    run.add_argument("--accounts", type=positive_int, default=ProducerSettings.accounts, metavar="N",
                     help="number of sender accounts the payments come from (default: %(default)s)")
    run.add_argument(
        "--scenarios", default=env.get("PRODUCER_SCENARIOS") or ProducerSettings.scenarios, metavar="MIX",
        help="inject labelled fraud scenarios: 'default', or name=rate pairs such as 'burst=0.004,takeover=0.002' "
        "(rate: chance per payment of starting one); each record gets a fraud.label header the detector never "
        "reads [env PRODUCER_SCENARIOS] (default: %(default)s, the original random stream)",
    )
    run.add_argument("--quiet", action="store_true", default=ProducerSettings.quiet, help="do not print each payment")


def add_processor_arguments(parser: argparse.ArgumentParser) -> None:
    """The fraud processor's --no-reasons: the ``processor`` section."""
    _makes_section(parser, "processor")
    parser.add_argument(
        "--no-reasons", dest="reasons", action="store_false", default=ProcessorSettings.reasons,
        help="print only the original line, not the detector's reasons after it",
    )


def build_parser(
    prog: str,
    description: str,
    *,
    consumes: str | None,
    default_group: str | None = None,
    producer: bool = False,
    transactional: bool = False,
    env: Mapping[str, str] | None = None,
) -> argparse.ArgumentParser:
    """The argument parser of one pipeline script; defaults come from the environment, then from the sections' fields.

    ``consumes`` names the topic the script reads (for the help text) and
    ``default_group`` its consumer group; ``producer`` adds the producer's
    flags instead of the consumer's; ``transactional`` adds the delivery
    guarantee flags and the rules file of the detector.
    """
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
    )
    parser.set_defaults(settings_sections=())
    _add_topic_arguments(add_connection_arguments(parser, env), env)
    if consumes is not None or producer:
        add_metrics_arguments(parser, env)
    if consumes is not None:
        add_consumer_arguments(parser, env, consumes, default_group)
    if transactional:
        add_delivery_arguments(parser, env)
        add_detector_arguments(parser, env)
    if producer:
        add_producer_arguments(parser, env)
    return parser


def connection_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> tuple[tuple[str, ...], Security]:
    """Bootstrap servers and security settings: a flag, else the environment, else the client config file, else the defaults.

    ConfigError (SecurityConfigError) for settings that cannot work; a script's edge says it in one line (runtime.cli_main).
    """
    env = os.environ if env is None else env
    file_servers, security = security_settings.resolve(args, env)
    text = args.bootstrap_servers or env.get("KAFKA_BOOTSTRAP_SERVERS") or file_servers or DEFAULT_BOOTSTRAP_SERVERS
    return bootstrap_servers(text), security


def connection_settings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ConnectionSettings:
    """The ``connection`` section from the flags of add_connection_arguments (see connection_from_args)."""
    servers, security = connection_from_args(args, env)
    client = cast(ClientName, _chosen(args.client, "KAFKA_CLIENT", CLIENTS))
    return ConnectionSettings(bootstrap_servers=servers, client=client, security=security)


def topic_settings(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> TopicSettings:
    """The ``topics`` section: the names from the flags, the layout from the environment."""
    base = topic_settings_from_env(env)
    return TopicSettings(
        payments=args.payments_topic,
        fraud=args.fraud_topic,
        legit=args.legit_topic,
        dead_letter=args.dead_letter_topic,
        rules=args.rules_topic,
        rules_rejected=args.rules_rejected_topic,
        lists=args.lists_topic,
        list_definitions=args.list_definitions_topic,
        labels=args.labels_topic,
        audit=args.audit_topic,
        claims=args.claims_topic,
        proposals=args.proposals_topic,
        payments_partitions=base.payments_partitions,
        routed_partitions=base.routed_partitions,
        dead_letter_partitions=base.dead_letter_partitions,
        replication_factor=base.replication_factor,
        min_insync_replicas=base.min_insync_replicas,
    )


def consumer_settings(args: argparse.Namespace) -> ConsumerSettings:
    """The ``consumer`` section from the flags of add_consumer_arguments."""
    return ConsumerSettings(
        group_id=args.group_id, idle_timeout_s=args.idle_timeout, commit_interval_ms=args.commit_interval_ms, quiet=args.quiet,
    )


def producer_settings(args: argparse.Namespace) -> ProducerSettings:
    """The ``producer`` section from the flags of add_producer_arguments."""
    return ProducerSettings(
        count=args.count, rate=args.rate, seed=args.seed, accounts=args.accounts, scenarios=args.scenarios, quiet=args.quiet,
    )


def delivery_settings(args: argparse.Namespace) -> DeliverySettings:
    """The ``delivery`` section from the flags of add_delivery_arguments."""
    guarantee = cast(Guarantee, _chosen(args.guarantee, "DETECTOR_GUARANTEE", GUARANTEES))
    return DeliverySettings(guarantee=guarantee, transactional_id=args.transactional_id, linger_ms=args.linger_ms,
                            trace_transactions=args.trace_transactions)


def detector_settings(args: argparse.Namespace) -> DetectorSettings:
    """The ``detector`` section from the flag of add_detector_arguments."""
    return DetectorSettings(rules_file=args.rules_file, state_dir=args.state_dir)


def processor_settings(args: argparse.Namespace) -> ProcessorSettings:
    """The ``processor`` section from the flag of add_processor_arguments."""
    return ProcessorSettings(reasons=args.reasons)


def metrics_settings(args: argparse.Namespace) -> MetricsSettings:
    """The ``metrics`` section from the flags of add_metrics_arguments."""
    return MetricsSettings(port=args.metrics_port, host=args.metrics_host)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Freeze the flags of a build_parser parser (over environment, over defaults) into Settings.

    Each section is made from its own flags; a section whose flags the script did not add is None.
    """
    made = set(args.settings_sections)
    return Settings(
        connection=connection_settings(args, env),
        topics=topic_settings(args, env),
        create_topics=args.create_topics,
        consumer=consumer_settings(args) if "consumer" in made else None,
        producer=producer_settings(args) if "producer" in made else None,
        delivery=delivery_settings(args) if "delivery" in made else None,
        detector=detector_settings(args) if "detector" in made else None,
        processor=processor_settings(args) if "processor" in made else None,
        metrics=metrics_settings(args) if "metrics" in made else None,
    )
