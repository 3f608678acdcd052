"""The fraud console: a live web page of the pipeline, a case queue, and Kafdrop's view of the cluster (``fraud_console.py``).

``monitor`` reads the pipeline's topics, ``latency`` the detectors' decision
latency from their metrics, ``cluster_view`` looks up brokers, topics, groups
and messages, ``casework`` keeps the case queue, labels and lists,
``accounts`` the users and their sessions, ``app`` serves the page
(``static/``) and its API.

    python fraud_console.py [--host H] [--port P] [--users FILE]
    python fraud_console.py adduser NAME --role viewer|analyst|admin [--users FILE] [--password-stdin]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import os
import sys
import threading
from pathlib import Path

from aiohttp import web

from ..config import Settings, build_parser, non_negative_int
from ..errors import ConfigError, PipelineError
from ..rules import ORIGINAL, RuleError, RuleSet, load_ruleset
from ..runtime import cli_main, run_cli
from .accounts import ROLES, load_users, save_user
from .app import Guard, make_app
from .casework import CaseWork
from .cluster_view import ClusterView
from .latency import DecisionLatency, endpoint_url
from .monitor import Monitor

NAME = "fraud_console"
DEFAULT_USERS_FILE = "console-users.json"


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_names(host: str, port: int, allowed: list[str]) -> set[str]:
    """The Host header values the console answers to: its loopback names and address, and the ones allowed."""
    names = {"127.0.0.1", "localhost", "[::1]", *allowed}
    if host not in ("0.0.0.0", "::"):
        names.add(f"[{host}]" if ":" in host else host)
    hosts = {f"{name}:{port}" for name in names if ":" not in name.strip("[]") or name.startswith("[")}
    hosts |= set(allowed)  # as given: with a port, or without one (a proxy on 80 or 443)
    if port == 80:
        hosts |= names
    return hosts


def run(settings: Settings, stop: threading.Event, host: str, port: int, rules_file: str | None,
        detector_metrics: list[str] | None = None, users_file: str = DEFAULT_USERS_FILE,
        allowed_hosts: list[str] | None = None) -> int:
    try:
        baseline: RuleSet = ORIGINAL if rules_file is None else load_ruleset(rules_file)
    except RuleError as exc:
        raise PipelineError(f"rules file refused: {exc}") from None
    users = load_users(Path(users_file))
    if not users and not loopback(host):
        raise ConfigError(f"refusing to serve on {host} without accounts: anyone who reaches it could act as an "
                          f"analyst; add one with `fraud_console.py adduser NAME --role admin` (users file {users_file})")
    monitor = Monitor(settings, baseline)
    cases = CaseWork(settings, lambda: monitor.ruleset().version)
    guard = Guard(host_names(host, port, allowed_hosts or []), users)
    view = ClusterView(settings)
    try:
        latency = DecisionLatency(detector_metrics or [])  # the flag's are checked; the environment's are not yet
    except ValueError as exc:
        raise PipelineError(f"DETECTOR_METRICS: {exc}") from None
    reader = threading.Thread(target=monitor.run, args=(stop,), name="console-monitor", daemon=True)
    reader.start()
    case_reader = threading.Thread(target=cases.run, args=(stop,), name="console-cases", daemon=True)
    case_reader.start()
    scraper = threading.Thread(target=latency.run, args=(stop,), name="console-latency", daemon=True)
    if latency.urls:
        scraper.start()
    try:
        accounts = f"{len(users)} account(s) from {users_file}" if users else "no accounts: read-only"
        asyncio.run(_serve(make_app(monitor, view, stop, latency, cases, guard), host, port, stop, accounts))
    finally:
        stop.set()
        reader.join(10)
        case_reader.join(10)
        if latency.urls:
            scraper.join(10)
        view.close()
    return 0


async def _serve(app: web.Application, host: str, port: int, stop: threading.Event, accounts: str) -> None:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise PipelineError(f"cannot serve the console on {host}:{port}: {exc.strerror or exc}") from None
        print(f"{NAME}: http://{host}:{port}/ ({accounts}; Ctrl-C to stop)", flush=True)
        while not stop.is_set():
            await asyncio.sleep(0.2)
    finally:
        await runner.cleanup()


def _metrics_url(text: str) -> str:
    try:
        return endpoint_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def adduser(argv: list[str]) -> int:
    """``fraud_console.py adduser NAME --role ROLE``: add or change a user in the users file."""
    parser = argparse.ArgumentParser(prog=f"{NAME} adduser", description="Add a console user, or change one's role "
                                     "and password, in the users file (salted scrypt hashes, mode 0600).")
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--role", choices=ROLES, default="analyst",
                        help="viewer: sees; analyst: resolves cases; admin: also edits lists (default: %(default)s)")
    parser.add_argument("--users", default=os.environ.get("CONSOLE_USERS") or DEFAULT_USERS_FILE, metavar="FILE",
                        help="the users file [env CONSOLE_USERS] (default: %(default)s)")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    args = parser.parse_args(argv)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 2
    try:
        new = save_user(Path(args.users), args.name, args.role, password)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'added' if new else 'changed'} {args.name} ({args.role}) in {args.users}")
    return 0


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["adduser"]:
        return adduser(argv[1:])
    parser = build_parser(
        NAME,
        "A live web page of the fraud pipeline (payments/s, fraud rate, alerts with their reasons, rules and "
        "their hits, dead letters, consumer lag) and Kafdrop's read-only view of the cluster (brokers, topics, "
        "consumer groups, a message browser), and the case queue where analysts resolve held payments (sign-in "
        "with --users; `fraud_console.py adduser NAME` adds one). Reads Kafka with the scripts' client settings; "
        "writes only labels, list entries and the audit trail, on an analyst's or admin's action.",
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
    web_group.add_argument("--users", default=os.environ.get("CONSOLE_USERS") or DEFAULT_USERS_FILE, metavar="FILE",
                           help="the users file (`adduser` writes it); without one the console is read-only and "
                           "serves on loopback only [env CONSOLE_USERS] (default: %(default)s)")
    web_group.add_argument("--allowed-host", action="append", default=[], metavar="NAME[:PORT]",
                           help="a Host name the console also answers to (behind a proxy, or on a LAN name); "
                           "repeat for several (default: its loopback names only)")
    args = parser.parse_args(argv)
    return run_cli(NAME, args, lambda settings, stop: run(settings, stop, args.host, args.port, args.rules_file,
                                                           args.detector_metrics, args.users, args.allowed_host))
