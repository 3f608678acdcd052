"""The console's case queue: held payments read from the fraud topic, claims, resolutions, labels, lists, the audit.

One thread reads, outside any group (committed records only):

- the fraud topic from CASE_DAYS back: every payment held for review is a case;
- the fraud and legit topics' payments of the same span, the last HISTORY_KEPT
  of each account (what an analyst sees of the account's recent history);
- the labels topic from its beginning: a payment with a label is resolved;
- the lists topic from its beginning, as a detector reads it;
- the claims topic from its beginning.

Claims live in the claims topic, read from its beginning (fraud_pipeline.claims):
one analyst per case, until released, resolved, or CLAIM_S after it was
taken; every console (and this one after a restart) sees the same holder. A
claim or release is written, then read back before the call returns: only
then does the console know whether it took effect. Every claim, release,
resolution and list change is written to the audit topic, and a resolution
to the labels topic (fraud_pipeline.cases) before the call returns.

Every change goes out with its audit record in one Kafka transaction (a
label, a snooze and a list entry of one resolution too): every reader reads
committed records only, so a failure between them leaves neither. With a
``transactional_id`` (the console's: ``fraud-console-<host>-<n>``) a
restarted console aborts what it left open at once.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import orjson

from ..cases import AuditEvent, Label, RecordError, latest_labels, precision_at_k, precision_by_rule
from ..claims import CLAIM, RELEASE, ClaimBook, ClaimRecord
from ..clients import ClientError, Consumer, Record, TopicPartition, UnknownTopicError
from ..config import Settings
from ..errors import PipelineError, RuleError
from ..kafka_io import connect, make_producer
from ..live_rules import LiveLists
from ..rules.lists import (
    BLOCK,
    MAX_SNOOZE_S,
    SNOOZE,
    SNOOZE_PREFIX,
    ListBook,
    ListEntry,
    ListSpec,
    entry_key,
    entry_record,
    list_record,
    utc,
)
from ..stage import Output
from .monitor import record_json

log = logging.getLogger(__name__)

CASE_DAYS = 7
"""How far back the fraud topic is read for cases."""
HISTORY_KEPT = 20
"""Routed payments kept per account."""
ACCOUNTS_KEPT = 50_000
"""Accounts whose history is kept (the least recently seen go first)."""
CASE_BYTES = 32 * 1024 * 1024
"""Record bytes of the cases kept; past it the oldest cases are forgotten (counted, and said on the page). In memory
a case and its history take about 3 times their records' bytes (docs/operations.md)."""
HISTORY_BYTES = 32 * 1024 * 1024
"""Record bytes of the accounts' histories kept; past it the least recently seen accounts go first."""
RETRY_S = 5.0
PRUNE_S = 60.0
"""How often cases older than the span read, and lapsed claims, are forgotten."""
WRITE_TIMEOUT_S = 15.0


class CaseError(Exception):
    """A case action refused: ``status`` is the HTTP status the page gets (404, 409...)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _now_ms() -> int:
    return int(time.time() * 1000)


def _routed(record: Record) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A routed record's payment and decision; None if unreadable (the console shows what it can read)."""
    try:
        value = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    decision = value.pop("DECISION", None)
    return value, decision if isinstance(decision, dict) else {}


def _record_bytes(record: Record) -> int:
    """What a record weighs as read: its key, value and headers."""
    return (len(record.key or b"") + len(record.value or b"")
            + sum(len(name) + len(value or b"") for name, value in record.headers or ()))


def _outcome(decision: dict[str, Any], topic_is_fraud: bool) -> str:
    outcome = decision.get("outcome")
    if isinstance(outcome, str):
        return outcome
    return "decline" if topic_is_fraud else "approve"


class CaseWork:
    """Reads cases, labels and lists in a thread (``run``); every other method is safe from any thread."""

    def __init__(self, settings: Settings, ruleset_version: Callable[[], str], *, case_days: float = CASE_DAYS,
                 transactional_id: str | None = None) -> None:
        self._settings = settings
        self._transactional_id = transactional_id
        self._ruleset_version = ruleset_version
        self._case_days = case_days
        self._lock = threading.Lock()
        self._cases: dict[str, dict[str, Any]] = {}
        self._case_sizes: dict[str, int] = {}
        """Each case's record bytes, by payment id."""
        self._case_bytes = 0
        self.cases_forgotten = 0
        """Cases forgotten while still within the span read, to keep under CASE_BYTES."""
        self._history: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()
        self._history_bytes = 0
        self._labels: dict[str, Label] = {}
        self._claims = ClaimBook()
        self._claims_read = threading.Condition(self._lock)
        """Notified whenever claims were read: a claim or release waits for its own record."""
        self._resolving: set[str] = set()
        """Cases being resolved now: a second resolution waits for none, it is refused."""
        self.book = ListBook()
        self._output: Output | None = None
        self._write_lock = threading.Lock()
        self.error: str | None = None

    # -- the reading thread ---------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Read until ``stop``; a lost broker or a missing topic is shown on the page and retried."""
        backend = connect(self._settings)
        routed = topics = None
        lists: LiveLists | None = None
        pruned_at = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    if routed is None:
                        routed = self._open(backend.consumer("fraud-console-cases", None, max_records=2000), since_days=True)
                    if topics is None:
                        topics = self._open(backend.consumer("fraud-console-labels", None, max_records=2000), since_days=False)
                        lists = LiveLists(topics, self._rejected, self.book,
                                          definitions=self._settings.topics.list_definitions)
                    batch = topics.poll(0.2, 2000)
                    with self._lock:
                        for records in batch.values():
                            for record in records:
                                self._safely(self._take_topic_record, record, lists)
                        if lists is not None:
                            lists.refuse_misplaced()
                        self._claims_read.notify_all()
                    batch = routed.poll(0.3, 2000)
                    with self._lock:
                        for records in batch.values():
                            for record in records:
                                self._safely(self._take_routed, record)
                        if time.monotonic() - pruned_at >= PRUNE_S:
                            pruned_at = time.monotonic()
                            self.prune(_now_ms())
                    self.error = None
                except UnknownTopicError as exc:
                    self.error = f"{exc}: waiting for the pipeline to create it"
                    for client in (routed, topics):
                        if client is not None:
                            client.close()
                    routed = topics = None
                    stop.wait(RETRY_S)
                except ClientError as exc:
                    self.error = f"reading Kafka: {exc}"
                    stop.wait(RETRY_S)
        finally:
            for client in (routed, topics):
                if client is not None:
                    client.close()
            with self._write_lock:
                if self._output is not None:
                    self._output.producer.close()

    def _open(self, consumer: Consumer, *, since_days: bool) -> Consumer:
        topics = self._settings.topics
        names = ([topics.fraud, topics.legit] if since_days
                 else [topics.labels, topics.list_definitions, topics.lists, topics.claims])
        tps = [TopicPartition(topic, p) for topic in names for p in sorted(consumer.partitions_for(topic, 10))]
        marks = consumer.watermarks(tps, 10)
        if not since_days:
            consumer.assign({tp: first for tp, (first, _) in marks.items()})
            return consumer
        starts = consumer.offsets_for_times({tp: int((time.time() - self._case_days * 86400) * 1000) for tp in tps}, 10)
        consumer.assign({tp: marks[tp][1] if (start := starts.get(tp)) is None else start for tp in tps})
        return consumer

    @staticmethod
    def _safely(take: Callable[..., None], record: Record, *args: Any) -> None:
        """One record taken in; whatever it holds, it cannot stop the reading thread (it is logged and left out)."""
        try:
            take(record, *args)
        except Exception as exc:
            log.warning("record %s/%d/%d left out: %s: %s", record.topic, record.partition, record.offset,
                        type(exc).__name__, exc)

    def _rejected(self, record: Record, reason: str) -> None:
        log.warning("list record at %s offset %d not applied: %s", record.topic, record.offset, reason)

    def _take_topic_record(self, record: Record, lists: LiveLists | None) -> None:
        if record.topic in (self._settings.topics.lists, self._settings.topics.list_definitions):
            if lists is not None:
                lists.apply(record)
            return
        if record.topic == self._settings.topics.claims:
            if record.value is not None:
                self._claims.apply(ClaimRecord.from_record(record.key, record.value))
            return
        if record.value is None:  # a label removed
            self._labels.pop((record.key or b"").decode("utf-8", "replace"), None)
            return
        try:
            label = Label.from_record(record.key, record.value)
        except RecordError as exc:
            log.warning("label at offset %d not read: %s", record.offset, exc)
            return
        self._labels[label.payment_id] = label

    def prune(self, now_ms: int) -> None:
        """Forget the cases older than the span read (a console running for weeks keeps only that span), and lapsed
        claims; under the lock."""
        oldest = now_ms - round(self._case_days * 86_400_000)
        for payment_id in [p for p, case in self._cases.items() if (case["timestamp_ms"] or 0) < oldest]:
            self._forget_case(payment_id)
        self._claims.prune(now_ms)

    def _forget_case(self, payment_id: str) -> None:
        del self._cases[payment_id]
        self._case_bytes -= self._case_sizes.pop(payment_id)

    def _take_routed(self, record: Record) -> None:
        read = _routed(record)
        if read is None:
            return
        payment, decision = read
        outcome = _outcome(decision, record.topic == self._settings.topics.fraud)
        size = _record_bytes(record)
        account = payment.get("ACCOUNT")
        if isinstance(account, str):
            history = self._history.get(account)
            if history is None:
                history = self._history[account] = deque(maxlen=HISTORY_KEPT)
            else:
                self._history.move_to_end(account)
            if len(history) == HISTORY_KEPT:
                self._history_bytes -= history[-1]["bytes"]
            history.appendleft({"payment": payment, "outcome": outcome, "score": decision.get("score"),
                                "timestamp_ms": record.timestamp, "bytes": size})
            self._history_bytes += size
            while len(self._history) > 1 and (len(self._history) > ACCOUNTS_KEPT or self._history_bytes > HISTORY_BYTES):
                _, dropped = self._history.popitem(last=False)
                self._history_bytes -= sum(entry["bytes"] for entry in dropped)
        payment_id = payment.get("PAYMENT_ID")
        if outcome == "review" and isinstance(payment_id, str):
            if payment_id in self._cases:
                self._forget_case(payment_id)
            self._cases[payment_id] = {"id": payment_id, "payment": payment, "decision": decision,
                                       "record": record_json(record), "timestamp_ms": record.timestamp}
            self._case_sizes[payment_id] = size
            self._case_bytes += size
            while len(self._cases) > 1 and self._case_bytes > CASE_BYTES:
                self._forget_case(next(iter(self._cases)))  # the first read: the oldest
                self.cases_forgotten += 1

    # -- what the page reads --------------------------------------------------

    def _claim_of(self, payment_id: str) -> dict[str, Any] | None:
        now_ms = _now_ms()
        holder = self._claims.holder(payment_id, now_ms)
        if holder is None:
            return None
        user, at_ms = holder
        return {"user": user, "since_s": max(0, round((now_ms - at_ms) / 1000))}

    def queue(self) -> dict[str, Any]:
        """Open cases, oldest first, and the last resolved ones, newest first."""
        with self._lock:
            rows = []
            for case in self._cases.values():
                payment, decision = case["payment"], case["decision"]
                label = self._labels.get(case["id"])
                rows.append({
                    "id": case["id"], "timestamp_ms": case["timestamp_ms"], "account": payment.get("ACCOUNT"),
                    "amount": payment.get("AMOUNT"), "to": payment.get("TO"), "type": payment.get("PAYMENT_TYPE"),
                    "score": decision.get("score"), "claim": self._claim_of(case["id"]),
                    "label": label.to_dict() if label is not None else None,
                })
        open_cases = sorted((r for r in rows if r["label"] is None), key=lambda r: r["timestamp_ms"])
        resolved = sorted((r for r in rows if r["label"] is not None), key=lambda r: -r["label"]["at_ms"])[:50]
        return {"open": open_cases, "resolved": resolved, "error": self.error, "forgotten": self.cases_forgotten}

    def case(self, payment_id: str) -> dict[str, Any]:
        with self._lock:
            case = self._cases.get(payment_id)
            if case is None:
                raise CaseError(f"no case {payment_id!r}", 404)
            payment = case["payment"]
            account = payment.get("ACCOUNT")
            history = [{key: value for key, value in h.items() if key != "bytes"}
                       for h in self._history.get(account, ()) if h["payment"].get("PAYMENT_ID") != payment_id]
            label = self._labels.get(payment_id)
            now = self.book.clock()
            listed = []
            for name, spec in sorted(self.book.specs.items()):
                value = payment.get(spec.field)
                entry = self.book.entries.get(name, {}).get(str(value)) if value is not None else None
                if entry is not None and entry.live(now):
                    listed.append({"list": name, "level": spec.level, "field": spec.field, "value": entry.value,
                                   "by": entry.by, "reason": entry.reason, "expires_ms": entry.expires_ms})
            return {**case, "history": history, "lists": listed, "claim": self._claim_of(payment_id),
                    "label": label.to_dict() if label is not None else None}

    # -- what analysts do -----------------------------------------------------

    def claim(self, payment_id: str, user: str) -> dict[str, Any]:
        with self._lock:
            if payment_id not in self._cases:
                raise CaseError(f"no case {payment_id!r}", 404)
            if payment_id in self._labels:
                raise CaseError("this case is resolved", 409)
            holder = self._claim_of(payment_id)
            if holder is not None and holder["user"] != user:
                raise CaseError(f"claimed by {holder['user']}", 409)
        if not self._claims_change(ClaimRecord(payment_id, user, CLAIM, _now_ms(), secrets.token_hex(8))):
            with self._lock:
                holder = self._claim_of(payment_id)
            raise CaseError(f"claimed by {holder['user'] if holder else 'another analyst'}", 409)
        return {"ok": True, "claim": user}

    def release(self, payment_id: str, user: str) -> dict[str, Any]:
        with self._lock:
            holder = self._claim_of(payment_id)
            if holder is None or holder["user"] != user:
                raise CaseError("you do not hold this case", 409)
        if not self._claims_change(ClaimRecord(payment_id, user, RELEASE, _now_ms(), secrets.token_hex(8))):
            raise CaseError("you do not hold this case", 409)
        return {"ok": True}

    def _claims_change(self, claim: ClaimRecord) -> bool:
        """Write a claim or release with its audit record, read it back; whether it took effect."""
        with self._lock:
            self._claims.expect(claim.token)
        change = Change(self._settings.topics.audit)
        change.write(self._settings.topics.claims, *claim.to_record())
        change.audit(claim.user, claim.action, claim.payment_id)
        self._commit(change)
        with self._claims_read:
            if not self._claims_read.wait_for(lambda: claim.token in self._claims.outcomes, WRITE_TIMEOUT_S):
                raise PipelineError(f"the {claim.action} was written but not read back within {WRITE_TIMEOUT_S:.0f} s: "
                                    f"look again in a moment")
            return self._claims.outcomes.pop(claim.token)

    def resolve(self, payment_id: str, user: str, verdict: str, note: str,
                add_to_list: tuple[str, str, float | None] | None = None, snooze: tuple[str, float] | None = None) -> Label:
        """Publish the label (and the audit record) of a case the user holds.

        ``add_to_list``: (list, field value, ttl_s); ``snooze``: (rule id, seconds): that rule does not count for
        the case's account for that long (a legit case only, a rule that fired on it, at most MAX_SNOOZE_S).
        """
        with self._lock:
            case = self._cases.get(payment_id)
            if case is None:
                raise CaseError(f"no case {payment_id!r}", 404)
            if payment_id in self._labels or payment_id in self._resolving:
                raise CaseError("this case is resolved", 409)
            holder = self._claim_of(payment_id)
            if holder is None or holder["user"] != user:
                raise CaseError("claim the case before resolving it", 409)
            if add_to_list is not None:
                self._check_entry(add_to_list[0], add_to_list[1])
            decision = case["decision"]
            fired = [r for r in decision.get("rules", []) if isinstance(r, dict)]
            rules = [f"{r.get('id')}@{r.get('version')}" for r in fired]
            account = case["payment"].get("ACCOUNT")
        if snooze is not None:
            rule_id, seconds = snooze
            if verdict != "legit":
                raise CaseError("a rule is snoozed for an account only on a case resolved as legit", 400)
            if rule_id not in {r.get("id") for r in fired if r.get("mode") == "enabled"}:
                raise CaseError(f"rule {rule_id!r} did not count on this case", 400)
            if not isinstance(account, str) or not account:
                raise CaseError("this payment has no ACCOUNT to snooze the rule for", 400)
            if not 0 < seconds <= MAX_SNOOZE_S:
                raise CaseError(f"a snooze lasts at most {MAX_SNOOZE_S // 86400} days", 400)
            now = _now_ms()
            try:
                ListBook().apply(*entry_record(ListEntry(SNOOZE_PREFIX + rule_id, account, user, "", now,
                                                         now + round(seconds * 1000))))
            except RuleError as exc:
                raise CaseError(f"cannot snooze {rule_id} for this account: {exc}", 400) from None
        with self._lock:
            if payment_id in self._resolving:
                raise CaseError("this case is resolved", 409)
            self._resolving.add(payment_id)
        try:
            return self._resolved(payment_id, user, verdict, note, decision, rules, account, add_to_list, snooze)
        finally:
            with self._lock:
                self._resolving.discard(payment_id)

    def _resolved(self, payment_id: str, user: str, verdict: str, note: str, decision: dict[str, Any], rules: list[str],
                  account: Any, add_to_list: tuple[str, str, float | None] | None, snooze: tuple[str, float] | None,
                  ) -> Label:
        score = decision.get("score")
        label = Label(payment_id, verdict, user, _now_ms(), note, float(score) if isinstance(score, int | float) else 0.0,
                      str(decision.get("outcome", "review")), tuple(rules), self._ruleset_version())
        change = Change(self._settings.topics.audit)
        change.write(self._settings.topics.labels, *label.to_record())
        change.audit(user, "resolve", payment_id, {"verdict": verdict, "note": note, "rules": list(rules),
                                                   "ruleset": label.ruleset})
        reason = f"case {payment_id}: {note}" if note else f"case {payment_id}"
        if snooze is not None:
            assert isinstance(account, str)
            self._snooze(change, user, payment_id, snooze[0], account, snooze[1], reason)
        if add_to_list is not None:
            name, value, ttl_s = add_to_list
            self._list_entry(change, user, name, value, ttl_s, reason)
        self._commit(change)
        with self._lock:
            self._labels[payment_id] = label
        return label

    def _snooze(self, change: Change, user: str, payment_id: str, rule_id: str, account: str, seconds: float,
                reason: str) -> None:
        name = SNOOZE_PREFIX + rule_id  # its name makes the list: nothing to define
        now = _now_ms()
        entry = ListEntry(name, account, user, reason[:500], now, now + round(seconds * 1000))
        key, data = entry_record(entry)
        change.write(self._settings.topics.lists, key, data, listed=True)
        change.audit(user, "snooze", f"{name}/{account}", {"rule": rule_id, "account": account, "case": payment_id,
                                                           "expires_ms": entry.expires_ms})

    def lists(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self.book.clock()
            return [{**spec.to_dict(), "entries": [
                {**entry.to_dict(), "live": entry.live(now),
                 "expires": utc(entry.expires_ms) if entry.expires_ms is not None else None}
                for entry in sorted(self.book.entries.get(name, {}).values(), key=lambda e: e.value)]}
                for name, spec in sorted(self.book.specs.items())]

    def _check_entry(self, name: str, value: str, entry: ListEntry | None = None) -> ListSpec:
        """The list ``name`` if ``value`` (``entry``) may be added to it from the list view or a case; else CaseError."""
        spec = self.book.specs.get(name)
        if spec is None:
            raise CaseError(f"no list {name!r}", 404)
        if spec.level == SNOOZE:
            raise CaseError(f"{name} is a snooze list: a snooze is made by resolving a case as legit", 400)
        check = ListBook()
        check.define(*list_record(spec))
        try:
            check.apply(*entry_record(entry or ListEntry(name, value, "check", "", _now_ms())))
        except RuleError as exc:
            raise CaseError(str(exc), 400) from None
        return spec

    def add_to_list(self, user: str, name: str, value: str, ttl_s: float | None, reason: str) -> ListEntry:
        change = Change(self._settings.topics.audit)
        entry = self._list_entry(change, user, name, value, ttl_s, reason)
        self._commit(change)
        return entry

    def _list_entry(self, change: Change, user: str, name: str, value: str, ttl_s: float | None, reason: str) -> ListEntry:
        now = _now_ms()
        entry = ListEntry(name, value, user, reason[:500], now, None if ttl_s is None else now + round(ttl_s * 1000))
        with self._lock:
            spec = self._check_entry(name, value, entry)
        key, data = entry_record(entry)
        change.write(self._settings.topics.lists, key, data, listed=True)
        change.audit(user, "list-add", f"{name}/{value}", {"level": spec.level, "field": spec.field, "reason": reason,
                                                          "expires_ms": entry.expires_ms, "block": spec.level == BLOCK})
        return entry

    def remove_from_list(self, user: str, name: str, value: str) -> None:
        change = Change(self._settings.topics.audit)
        change.write(self._settings.topics.lists, entry_key(name, value), None, listed=True)
        change.audit(user, "list-remove", f"{name}/{value}")
        self._commit(change)

    def labels(self) -> list[Label]:
        with self._lock:
            return list(self._labels.values())

    def precision(self, k: int) -> dict[str, Any]:
        """Per rule version and Precision@k from the labels read (the latest per payment)."""
        labels = list(latest_labels(self.labels()).values())
        return {
            "labels": len(labels), "fraud": sum(label.fraud for label in labels), "k": k,
            "precision_at_k": precision_at_k(((label.score, label.fraud) for label in labels), k),
            "rules": [{"rule": p.rule, "labelled": p.labelled, "fraud": p.fraud, "precision": p.precision}
                      for p in precision_by_rule(labels)],
        }

    def audit(self, user: str, action: str, target: str = "", detail: dict[str, Any] | None = None) -> None:
        """Write one audit record; a failure is logged and raised (the action is not taken silently unaudited)."""
        change = Change(self._settings.topics.audit)
        change.audit(user, action, target, detail)
        self._commit(change)

    def _commit(self, change: Change) -> None:
        """Write ``change``'s records, all or none: one transaction (with a transactional id), then apply its list
        records here at once (the topic's copies come back the same). PipelineError if it could not be written."""
        with self._write_lock:
            if self._output is None:
                self._output = self._new_output()
            output = self._output
            try:
                if self._transactional_id is not None:
                    output.producer.begin_transaction()
                for topic, key, value in change.records:
                    output.send(topic, key, value)
                output.flush(timeout_s=WRITE_TIMEOUT_S)
                if self._transactional_id is not None:
                    output.producer.commit_transaction(WRITE_TIMEOUT_S)
            except Exception as exc:
                self._output = None  # the next change starts afresh: a new producer aborts what this one left open
                threading.Thread(target=output.producer.close, args=(0,), daemon=True).start()
                topics = ", ".join(sorted({topic for topic, _, _ in change.records}))
                raise PipelineError(f"could not write to {topics}: {exc}; nothing of it was written") from None
        with self._lock:
            for key, value in change.listed:
                self.book.apply(key, value)

    def _new_output(self) -> Output:
        producer = make_producer(self._settings, "fraud-console", self._transactional_id)
        if self._transactional_id is not None:
            try:
                producer.init_transactions(WRITE_TIMEOUT_S)
            except Exception as exc:
                threading.Thread(target=producer.close, args=(0,), daemon=True).start()
                raise PipelineError(f"cannot start the console's transactional producer: {exc}") from None
        return Output(producer)


class Change:
    """The records of one console action (a change and its audit record), written together or not at all."""

    def __init__(self, audit_topic: str) -> None:
        self._audit_topic = audit_topic
        self.records: list[tuple[str, bytes, bytes | None]] = []
        self.listed: list[tuple[bytes, bytes | None]] = []
        """The lists topic's records among them, applied to the console's list book once written."""

    def write(self, topic: str, key: bytes, value: bytes | None, *, listed: bool = False) -> None:
        self.records.append((topic, key, value))
        if listed:
            self.listed.append((key, value))

    def audit(self, user: str, action: str, target: str = "", detail: dict[str, Any] | None = None) -> None:
        self.records.append((self._audit_topic, *AuditEvent(_now_ms(), user, action, target, detail or {}).to_record()))
