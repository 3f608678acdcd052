"""Who holds each case: claims as records of a compacted topic, read the same way by every console (no Kafka here).

A console does not decide a claim alone: it writes a claim record, then reads
the claims topic up to it. Every console applies the records in the topic's
order with the same rule, so all agree on the holder, and a console started
again reads them back:

- a claim by U at T takes the case if no one holds it, if its holder is U, or
  if the holder's claim is older than CLAIM_S at T; otherwise it is refused
  (it stays in the topic, and changes nothing);
- a release by U frees the case if U holds it.

The topic keeps every record younger than CLAIM_S (``min.compaction.lag.ms``):
compaction only ever drops records of claims that have lapsed anyway.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class ClaimError(ValueError):
    """A record of the claims topic that is not a claim or release."""


CLAIM_S = 30 * 60
"""A claim lapses this long after it was taken."""
CLAIM, RELEASE = "claim", "release"


@dataclass(frozen=True)
class ClaimRecord:
    """One claim or release, as the claims topic holds it (keyed by payment id)."""

    payment_id: str
    user: str
    action: str
    at_ms: int
    token: str
    """Unique per record: the console that wrote it knows it when it reads it back."""

    def to_record(self) -> tuple[bytes, bytes]:
        return self.payment_id.encode("utf-8"), json.dumps(
            {"user": self.user, "action": self.action, "at_ms": self.at_ms, "token": self.token}, ensure_ascii=False,
        ).encode("utf-8")

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None) -> ClaimRecord:
        try:
            data = json.loads(value or b"")
            payment_id = (key or b"").decode("utf-8")
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ClaimError(f"not a claim: {exc}") from None
        if (not isinstance(data, dict) or data.get("action") not in (CLAIM, RELEASE) or not payment_id
                or not isinstance(data.get("user"), str) or not isinstance(data.get("at_ms"), int)
                or not isinstance(data.get("token"), str)):
            raise ClaimError("a claim has a payment id key, a user, an action (claim or release), at_ms and a token")
        return cls(payment_id, data["user"], data["action"], data["at_ms"], data["token"])


class ClaimBook:
    """The holder of each case, from the claims topic's records applied in order."""

    def __init__(self, claim_s: float = CLAIM_S) -> None:
        self._claim_ms = round(claim_s * 1000)
        self._holders: dict[str, tuple[str, int]] = {}
        self.outcomes: dict[str, bool] = {}
        """Tokens of records this console waits for (``expect``), with whether each took effect once read."""

    def expect(self, token: str) -> None:
        self.outcomes.pop(token, None)

    def apply(self, record: ClaimRecord) -> bool:
        """Apply one record; whether it took effect (a claim taken or renewed, a case released)."""
        holder = self._holders.get(record.payment_id)
        if record.action == CLAIM:
            took = holder is None or holder[0] == record.user or record.at_ms - holder[1] > self._claim_ms
            if took:
                self._holders[record.payment_id] = (record.user, record.at_ms)
        else:
            took = holder is not None and holder[0] == record.user
            if took:
                del self._holders[record.payment_id]
        self.outcomes[record.token] = took
        if len(self.outcomes) > 10_000:  # nobody waits that long: keep the newest
            for token in list(self.outcomes)[:5_000]:
                del self.outcomes[token]
        return took

    def holder(self, payment_id: str, now_ms: int) -> tuple[str, int] | None:
        """(user, claimed at) of the case's live claim, or None."""
        holder = self._holders.get(payment_id)
        if holder is None or now_ms - holder[1] > self._claim_ms:
            return None
        return holder

    def prune(self, now_ms: int) -> None:
        """Forget lapsed claims."""
        for payment_id in [p for p, (_, at) in self._holders.items() if now_ms - at > self._claim_ms]:
            del self._holders[payment_id]
