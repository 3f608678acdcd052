"""When the detector's stages stop: together on a stop request or a failure, one after the other when idle."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fraud_detector")


class Chain:
    """A stop request stops every stage; with an idle timeout only the first stage (reading the payments) times
    out on its own, and each later one once the stage before it has ended and it has had no record for that long
    itself, having handled all that was sent to it, so that none ends before what is upstream of it has reached it."""

    def __init__(self, stop: threading.Event, stages: int, idle_timeout_s: float | None,
                 events: list[Any] | None = None) -> None:
        self.stops: list[threading.Event] = events or [threading.Event() for _ in range(stages)]
        """Each stage's stop event (``events``: of another process's stages, multiprocessing's)."""
        self.status = [0] * stages
        self._stop = stop
        self._idle_timeout_s = idle_timeout_s
        threading.Thread(target=self._forward, name="stop-stages", daemon=True).start()

    def _forward(self) -> None:
        self._stop.wait()
        for each in self.stops:
            each.set()

    def idle_timeout_s(self, index: int) -> float | None:
        return self._idle_timeout_s if index == 0 else None

    def follow(self, index: int, before: threading.Thread, handled: Callable[[], int], sent: Callable[[], int]) -> None:
        """Stage ``index`` ends once ``before`` (the stage upstream) has ended, it has handled all ``sent`` to it
        this run, and it has had no record for ``idle_timeout_s``."""
        if self._idle_timeout_s is None:
            return

        def wait() -> None:
            before.join()
            seen = handled()
            while not self.stops[index].wait(self._idle_timeout_s):
                if handled() == seen and seen >= sent():
                    self.stops[index].set()
                seen = handled()

        threading.Thread(target=wait, name=f"idle-stage-{index}", daemon=True).start()

    def run(self, index: int, stage: Callable[[], int]) -> int:
        """Run one stage; if it fails, or raises, the others stop too (and the detector exits non-zero)."""
        try:
            self.status[index] = stage()
        except Exception:
            log.exception("stage %d failed", index)
            self.status[index] = 1
        if self.status[index]:
            self._stop.set()
        return self.status[index]
