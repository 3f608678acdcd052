"""Run the four scripts together, their output interleaved and prefixed by name.

Started in the original tutorial's order (processors, then detector, then
producer). Ctrl-C (or --duration) stops them in the reverse order, each with
SIGTERM so it drains, flushes, commits and prints its summary; a second
Ctrl-C kills them all at once.

    python -m devcluster.demo [--duration S] [-- producer flags...]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO

from . import security as cluster_security
from .cluster import ClusterLayout
from .errors import ClusterError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("legit_processor", "fraud_processor", "fraud_detector", "payment_producer")
ROLES = {
    "legit_processor": cluster_security.LEGIT_PROCESSOR, "fraud_processor": cluster_security.FRAUD_PROCESSOR,
    "fraud_detector": cluster_security.DETECTOR, "payment_producer": cluster_security.PRODUCER,
}
"""On the secured local cluster (KAFKA_SECURITY=sasl_ssl) each script connects as its own role."""
WIDTH = max(len(name) for name in SCRIPTS)
STOP_TIMEOUT_S = 15.0


def _pump(name: str, stream: IO[str], lock: threading.Lock) -> None:
    prefix = f"{name:<{WIDTH}} | "
    for line in stream:
        with lock:
            sys.stdout.write(prefix + line)
            sys.stdout.flush()


def _stop(name: str, proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop within {STOP_TIMEOUT_S:.0f}s: killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devcluster.demo",
        description="Run legit_processor, fraud_processor, fraud_detector and payment_producer together "
        "against the cluster, output prefixed by script name, until Ctrl-C. With KAFKA_SECURITY=sasl_ssl, against "
        "the secured local cluster, each script with its own role's client file (.cluster/security/<role>.properties).",
    )
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop by itself after S seconds (default: until Ctrl-C)")
    parser.add_argument("producer_args", nargs="*", metavar="PRODUCER_ARG",
                        help="extra flags for payment_producer.py, after '--' (e.g. -- --rate 5)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    procs: list[tuple[str, subprocess.Popen[str]]] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:  # a second Ctrl-C: kill everything now
            for _, proc in procs:
                proc.kill()
            os._exit(130)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        security = ClusterLayout.from_env().security
    except ClusterError as exc:
        parser.error(str(exc))
    lock = threading.Lock()
    pumps: list[threading.Thread] = []
    try:
        for name in SCRIPTS:
            extra = args.producer_args if name == "payment_producer" else []
            script_env = env if security is None else dict(env, KAFKA_CLIENT_CONFIG=str(security.role_file(ROLES[name])))
            proc = subprocess.Popen(
                [sys.executable, str(PROJECT_ROOT / f"{name}.py"), *extra],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=script_env,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops each script in order
            )
            procs.append((name, proc))
            assert proc.stdout is not None
            pump = threading.Thread(target=_pump, args=(name, proc.stdout, lock), daemon=True)
            pump.start()
            pumps.append(pump)
            time.sleep(1.0)  # let each consumer join its group before the next script starts
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if any(proc.poll() is not None for _, proc in procs):
                break
            stop.wait(0.2)
    finally:
        for name, proc in reversed(procs):
            _stop(name, proc)
        for pump in pumps:
            pump.join(2.0)
    failed = [name for name, proc in procs if proc.returncode not in (0, -signal.SIGTERM)]
    if failed:
        print(f"demo: {', '.join(failed)} exited with an error", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
