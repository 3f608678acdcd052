"""The internal topics kept short: records every reader has committed past are deleted (delete-records).

The probes and answers topics each have one reader, the stage that consumes
them. What it has committed past is never read again, so the brokers need
not keep it: about every PURGE_EVERY_S, once a commit is durable, the stage
deletes its input's records before the offsets it committed, on a thread of
its own (an admin round trip per partition's leader). A refusal (no DELETE
right on the topic) is said once and purging stops; the topics then keep
records until their retention ends, nothing else changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from ..clients import ClientError, NotAuthorizedError, TopicPartition
from ..errors import PipelineError

log = logging.getLogger("fraud_detector")

PURGE_EVERY_S = 30.0

Delete = Callable[[Mapping[TopicPartition, int]], None]


class Purger:
    """Deletes ``topic``'s records before the offsets its reader committed, at most every ``every_s``."""

    def __init__(self, topic: str, delete: Delete, every_s: float = PURGE_EVERY_S) -> None:
        self._topic = topic
        self._delete = delete
        self._every_s = every_s
        self._due = time.monotonic() + every_s
        self._offsets: dict[int, int] = {}
        self._busy = threading.Event()
        self.refused = False
        self.purged = 0
        """Purges done."""

    def committed(self, offsets: Mapping[int, int]) -> None:
        """A commit of these next offsets is durable; purge up to them if it is time."""
        if self.refused:
            return
        for partition, offset in offsets.items():
            self._offsets[partition] = max(offset, self._offsets.get(partition, 0))
        now = time.monotonic()
        if now < self._due or self._busy.is_set() or not self._offsets:
            return
        self._due = now + self._every_s
        self._busy.set()
        upto = {TopicPartition(self._topic, partition): offset for partition, offset in self._offsets.items()}
        threading.Thread(target=self._purge, args=(upto,), name=f"purge-{self._topic}", daemon=True).start()

    def _purge(self, upto: Mapping[TopicPartition, int]) -> None:
        try:
            self._delete(upto)
            self.purged += 1
        except NotAuthorizedError as exc:
            self.refused = True
            log.warning("records of %s are not deleted once read (%s): it keeps them until its retention ends",
                        self._topic, exc)
        except (ClientError, PipelineError) as exc:  # a leader moving: the next purge goes further
            log.debug("records of %s not deleted this time: %s", self._topic, exc)
        finally:
            self._busy.clear()
