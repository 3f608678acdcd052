"""The fraud console: a live web page of the pipeline and Kafdrop's view of the cluster (``fraud_console.py``).

``monitor`` reads the pipeline's topics, ``latency`` the detectors' decision
latency from their metrics, ``cluster_view`` looks up brokers, topics, groups
and messages, ``app`` serves the page (``static/``) and its API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading

from aiohttp import web

from ..config import Settings, build_parser, non_negative_int
from ..errors import PipelineError
from ..rules import ORIGINAL, RuleError, RuleSet, load_ruleset
from ..runtime import cli_main, run_cli
from .app import make_app
from .cluster_view import ClusterView
from .latency import DecisionLatency, endpoint_url
from .monitor import Monitor

NAME = "fraud_console"


def run(settings: Settings, stop: threading.Event, host: str, port: int, rules_file: str | None,
        detector_metrics: list[str] | None = None) -> int:
    try:
        baseline: RuleSet = ORIGINAL if rules_file is None else load_ruleset(rules_file)
    except RuleError as exc:
        raise PipelineError(f"rules file refused: {exc}") from None
    monitor = Monitor(settings, baseline)
    view = ClusterView(settings)
    try:
        latency = DecisionLatency(detector_metrics or [])  # the flag's are checked; the environment's are not yet
    except ValueError as exc:
        raise PipelineError(f"DETECTOR_METRICS: {exc}") from None
    reader = threading.Thread(target=monitor.run, args=(stop,), name="console-monitor", daemon=True)
    reader.start()
    scraper = threading.Thread(target=latency.run, args=(stop,), name="console-latency", daemon=True)
    if latency.urls:
        scraper.start()
    try:
        asyncio.run(_serve(make_app(monitor, view, stop, latency), host, port, stop))
    finally:
        stop.set()
        reader.join(10)
        if latency.urls:
            scraper.join(10)
        view.close()
    return 0


async def _serve(app: web.Application, host: str, port: int, stop: threading.Event) -> None:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise PipelineError(f"cannot serve the console on {host}:{port}: {exc.strerror or exc}") from None
        print(f"{NAME}: http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
        while not stop.is_set():
            await asyncio.sleep(0.2)
    finally:
        await runner.cleanup()


def _metrics_url(text: str) -> str:
    try:
        return endpoint_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        NAME,
        "A live web page of the fraud pipeline (payments/s, fraud rate, alerts with their reasons, rules and "
        "their hits, dead letters, consumer lag) and Kafdrop's read-only view of the cluster (brokers, topics, "
        "consumer groups, a message browser). Reads Kafka directly with the scripts' client settings; writes nothing.",
        consumes=None,
    )
    web_group = parser.add_argument_group("web")
    web_group.add_argument("--host", default="127.0.0.1",
                           help="address to serve on; 0.0.0.0 for every interface (default: %(default)s)")
    web_group.add_argument("--port", type=non_negative_int, default=8080, help="port to serve on (default: %(default)s)")
    web_group.add_argument(
        "--rules", dest="rules_file", default=os.environ.get("DETECTOR_RULES") or None, metavar="FILE",
        help="the detector's rule set file, shown as the baseline under the rules topic's changes "
        "[env DETECTOR_RULES, as the detector's] (default: the original rule, BITCOIN is fraud)",
    )
    web_group.add_argument(
        "--detector-metrics", action="append", metavar="URL", type=_metrics_url,
        default=[url.strip() for url in os.environ.get("DETECTOR_METRICS", "").split(",") if url.strip()] or None,
        help="a detector's Prometheus endpoint (its --metrics-port), e.g. http://127.0.0.1:9401/metrics: the "
        "pipeline page shows the decision latency of the detectors given; repeat for several "
        "[env DETECTOR_METRICS, comma-separated] (default: none, no latency shown)",
    )
    args = parser.parse_args(argv)
    return run_cli(NAME, args, lambda settings, stop: run(settings, stop, args.host, args.port, args.rules_file,
                                                           args.detector_metrics))
