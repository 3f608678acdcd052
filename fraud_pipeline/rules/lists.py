"""Named lists of payment field values, each entry with an optional expiry: block, review, allow, watch, snooze.

A list has a name, the payment field its values are compared with (``TO``,
``ACCOUNT``, ``DEVICE``, ``CARD``...), and a level: what a payment whose
field is on the list gets, whatever its rules score:

- ``block``: declined. A block list made with ``overridable`` can be
  overridden by an allow entry; one without cannot;
- ``review``: at least held for review;
- ``allow``: approved, overriding reviews, the rules' score and overridable
  blocks (never a block that is not overridable);
- ``watch``: nothing by itself; rules read it with the ``in_list`` operator;
- ``snooze``: one rule (the list's ``rule``) does not count for the payments
  whose field is on it (it is listed as ``snoozed`` in the decision). Its
  entries always expire, within MAX_SNOOZE_S, and are made only from a
  resolved case in the console (audited), never by ``fraud_rules.py lists``.

The precedence, first match wins (``Decision.outcome``):

1. an entry of a block list that is not overridable: decline;
2. an entry of an allow list: approve;
3. an entry of an overridable block list: decline;
4. the rules' score reaches the threshold: decline;
5. an entry of a review list, or the score reaches the review threshold: review;
6. approve.

An entry names who added it and why, and may expire (``expires_ms``, wall
clock): from then on it is as if removed. Every match is in the decision's
reasons.

Definitions and entries live in two compacted topics, so that each can be
written by whom its job needs (least privilege): the list definitions topic,
one record per list (key ``NAME``, ``list_record``), written by the rules
admin only and applied by ``ListBook.define``; the lists topic, one record per
entry (key ``NAME/VALUE``, ``entry_record``), written by the console too and
applied by ``ListBook.apply``, which refuses a definition there (whoever may
add an entry must not turn a block list into a watch list). A snooze list
(``snooze.RULE``) has no definition: its name makes it (``snooze_spec``).
Definitions and entries apply in any order between the two topics: removing a
definition keeps its entries (unmatched until the list is defined again).
Pure Python: no Kafka; the clock is given (a fake one in tests).
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RuleError
from ..payment import Payment, is_text
from .fields import attribute_name, check_field

LEVELS = ("block", "review", "allow", "watch", "snooze")
BLOCK, REVIEW, ALLOW, WATCH, SNOOZE = LEVELS
MAX_SNOOZE_S = 30 * 86400
"""The longest a rule may be snoozed for one entity."""
SNOOZE_PREFIX = "snooze."
"""Snooze lists are named ``snooze.<rule id>`` (the console makes them)."""
OUTCOMES = ("approve", "review", "decline")
APPROVE, REVIEWED, DECLINE = OUTCOMES
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}\Z")
"""A list's name: also the first part of its entries' keys, up to a ``/`` it cannot hold."""
MAX_VALUE_CHARS = 256
MAX_TEXT_CHARS = 500
"""The longest ``by`` or ``reason`` an entry keeps."""


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)\Z")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_S = 366 * 86400
"""The longest expiry an entry may be given (a year and a day); longer: no expiry."""


def duration_s(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d`` in seconds, at most MAX_TTL_S; ValueError otherwise."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"a duration is a positive number with s, m, h or d (e.g. 10s, 15m, 7d), got {text!r}")
    seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds > MAX_TTL_S:
        raise ValueError(f"a duration is at most {MAX_TTL_S // 86400} days, got {text!r}")
    return seconds


MAX_MILLIS = 253_402_300_799_999
"""The last millisecond of the year 9999: later instants are refused (and cannot be shown)."""


def utc(ms: int) -> str:
    """An instant as lists show it: ``2026-12-03T18:00:00Z`` (the milliseconds themselves if out of range)."""
    try:
        return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms"





def check_name(name: Any, path: str = "name") -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise RuleError(path, f"a list name is 1-80 letters, digits, '.', '_' or '-', got {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class ListSpec:
    """One list: its name, the field its values are compared with, and its level."""

    name: str
    field: str
    level: str
    overridable: bool = False
    """For a block list: an allow entry overrides it."""
    description: str = ""
    rule: str = ""
    """For a snooze list: the id of the rule it snoozes."""

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "field": self.field, "level": self.level, "overridable": self.overridable,
                "description": self.description}
        return data | {"rule": self.rule} if self.rule else data


@dataclass(frozen=True, slots=True)
class ListEntry:
    """One value on a list: who added it, when and why, and until when it applies (None: until removed)."""

    list: str
    value: str
    by: str
    reason: str
    added_ms: int
    expires_ms: int | None = None

    def live(self, now_ms: float) -> bool:
        return self.expires_ms is None or now_ms < self.expires_ms

    def to_dict(self) -> dict[str, Any]:
        return {"list": self.list, "value": self.value, "by": self.by, "reason": self.reason,
                "added_ms": self.added_ms, "expires_ms": self.expires_ms}


@dataclass(frozen=True, slots=True)
class ListHit:
    """A payment's field found on a list with a level, as decisions carry it."""

    list: str
    level: str
    field: str
    value: str
    overridable: bool
    by: str
    reason: str
    expires_ms: int | None
    rule: str = ""
    """A snooze's rule id."""

    def describe(self) -> str:
        """``list mule-payees (block): TO=PAYEE-7, added by ana: chargeback 1234, until 2026-12-03T18:00:00Z``."""
        level = f"{self.level}, overridable" if self.level == BLOCK and self.overridable else self.level
        if self.level == SNOOZE:
            level = f"snoozes {self.rule}"
        until = f", until {utc(self.expires_ms)}" if self.expires_ms is not None else ""
        why = f": {self.reason}" if self.reason else ""
        return f"list {self.list} ({level}): {self.field}={self.value}, added by {self.by}{why}{until}"

    def to_dict(self) -> dict[str, Any]:
        data = {"list": self.list, "level": self.level, "field": self.field, "value": self.value,
                "overridable": self.overridable, "by": self.by, "reason": self.reason, "expires_ms": self.expires_ms}
        return data | {"rule": self.rule} if self.rule else data

    @classmethod
    def from_dict(cls, data: Any) -> ListHit:
        """A hit read back from a decision; KeyError, TypeError or ValueError if it is not one."""
        expires = data.get("expires_ms")
        return cls(str(data["list"]), str(data["level"]), str(data["field"]), str(data["value"]),
                   bool(data.get("overridable", False)), str(data.get("by", "")), str(data.get("reason", "")),
                   None if expires is None else int(expires), str(data.get("rule", "")))


def outcome(score: float, threshold: float, review_threshold: float | None, hits: tuple[ListHit, ...] = ()) -> str:
    """approve, review or decline: the rules' score against the thresholds, then the list hits (module docstring)."""
    if hits:
        levels = {(hit.level, hit.overridable) for hit in hits}
        if (BLOCK, False) in levels:
            return DECLINE
        if any(level == ALLOW for level, _ in levels):
            return APPROVE
        if (BLOCK, True) in levels:
            return DECLINE
    # weights are floats: 0.7 + 0.1 must reach a threshold of 0.8
    if score >= threshold - 1e-9:
        return DECLINE
    if hits and any(hit.level == REVIEW for hit in hits):
        return REVIEWED
    if review_threshold is not None and score >= review_threshold - 1e-9:
        return REVIEWED
    return APPROVE


def _text(data: Mapping[str, Any], key: str, path: str, *, required: bool = False, limit: int = MAX_TEXT_CHARS) -> str:
    value = data.get(key, "")
    if not is_text(value) or (required and not value):
        raise RuleError(f"{path}{key}", f"must be {'non-empty ' if required else ''}UTF-8 text, got {value!r}")
    if len(value) > limit:
        raise RuleError(f"{path}{key}", f"is at most {limit} characters, got {len(value)}")
    return value


def _millis(data: Mapping[str, Any], key: str, path: str, *, optional: bool) -> int | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_MILLIS:
        raise RuleError(f"{path}{key}", f"must be a time in epoch milliseconds (up to the year 9999), got {value!r}")
    return value


def _no_other_keys(data: Mapping[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(data) - allowed)
    if extra:
        raise RuleError(path, f"unknown key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(sorted(allowed))}")


def parse_spec(data: Any) -> ListSpec:
    """A list from its data form; RuleError names the field at fault."""
    if not isinstance(data, Mapping):
        raise RuleError("list", f"must be an object, got {type(data).__name__}")
    _no_other_keys(data, {"name", "field", "level", "overridable", "description", "rule"}, "list")
    name = check_name(data.get("name"), "list.name")
    level = data.get("level")
    if level not in LEVELS:
        raise RuleError("list.level", f"must be one of {', '.join(LEVELS)}, got {level!r}")
    overridable = data.get("overridable", False)
    if not isinstance(overridable, bool):
        raise RuleError("list.overridable", f"must be true or false, got {overridable!r}")
    if overridable and level != BLOCK:
        raise RuleError("list.overridable", "is for block lists only")
    rule = data.get("rule", "")
    if level == SNOOZE and (not isinstance(rule, str) or not NAME.match(rule)):
        raise RuleError("list.rule", f"a snooze list names the rule it snoozes, got {rule!r}")
    if level != SNOOZE and rule:
        raise RuleError("list.rule", "is for snooze lists only")
    return ListSpec(name, check_field(data.get("field"), "list.field"), level, overridable,
                    _text(data, "description", "list."), rule)


def parse_entry(data: Any) -> ListEntry:
    """A list entry from its data form; RuleError names the field at fault."""
    if not isinstance(data, Mapping):
        raise RuleError("entry", f"must be an object, got {type(data).__name__}")
    _no_other_keys(data, {"list", "value", "by", "reason", "added_ms", "expires_ms"}, "entry")
    added = _millis(data, "added_ms", "entry.", optional=False)
    expires = _millis(data, "expires_ms", "entry.", optional=True)
    assert added is not None
    return ListEntry(
        check_name(data.get("list"), "entry.list"), _text(data, "value", "entry.", required=True, limit=MAX_VALUE_CHARS),
        _text(data, "by", "entry.", required=True), _text(data, "reason", "entry."), added, expires,
    )


def snooze_spec(rule_id: str) -> ListSpec:
    """The snooze list of a rule: its accounts that the rule does not count for."""
    return ListSpec(SNOOZE_PREFIX + rule_id, "ACCOUNT", SNOOZE, description=f"accounts {rule_id} does not count for",
                    rule=rule_id)


def list_key(name: str) -> bytes:
    return name.encode("utf-8")


def entry_key(name: str, value: str) -> bytes:
    """``NAME/VALUE``: a list name holds no ``/``, so the first one separates them."""
    return f"{name}/{value}".encode()


def list_record(spec: ListSpec) -> tuple[bytes, bytes]:
    """The list definitions topic's record that creates or changes a list."""
    return list_key(spec.name), json.dumps(spec.to_dict()).encode("utf-8")


def entry_record(entry: ListEntry) -> tuple[bytes, bytes]:
    """The lists topic's record that adds a value to a list (or replaces its entry)."""
    return entry_key(entry.list, entry.value), json.dumps(entry.to_dict()).encode("utf-8")


def wall_clock_ms() -> float:
    return time.time() * 1000


class ListBook:
    """The lists and their entries, changed record by record; answers which live entries a payment matches.

    ``clock`` gives the time entries expire by, in epoch milliseconds.
    """

    def __init__(self, clock: Callable[[], float] = wall_clock_ms) -> None:
        self.clock = clock
        self.specs: dict[str, ListSpec] = {}
        self.entries: dict[str, dict[str, ListEntry]] = {}
        """Per list name (its list may not exist yet: entries can come first), value -> entry."""
        self._leveled: tuple[tuple[str, ListSpec, dict[str, ListEntry]], ...] = ()
        """(payment attribute, list, its entries) of every list with a level and entries."""

    def reset(self) -> None:
        self.specs.clear()
        self.entries.clear()
        self._index()

    @property
    def leveled(self) -> bool:
        """Whether some list with a level (not watch) has entries: else no payment can match one."""
        return bool(self._leveled)

    def define(self, key: bytes | None, value: bytes | None) -> str:
        """Apply one record of the list definitions topic; what it changed, in words. RuleError (nothing changed) if
        it is not valid."""
        name, item, data = _read(key, value)
        if item is not None:
            raise RuleError("key", f"{name}/{item} is an entry's key: entries belong in the lists topic, not with the "
                                   "definitions")
        if name.startswith(SNOOZE_PREFIX):
            raise RuleError("key", f"{name}: a snooze list is not defined, its name ({SNOOZE_PREFIX}RULE) makes it")
        if data is None:
            self.specs.pop(name, None)
            self._index()
            return f"list {name} removed"
        spec = parse_spec(data)
        if spec.name != name:
            raise RuleError("list.name", f"the record's key is {name!r} but the list's name is {spec.name!r}")
        if spec.level == SNOOZE:
            raise RuleError("list.level", f"a snooze list is not defined, its name ({SNOOZE_PREFIX}RULE) makes it")
        self.specs[name] = spec
        self._index()
        return f"list {name} ({spec.level}, {spec.field}) set"

    def apply(self, key: bytes | None, value: bytes | None) -> str:
        """Apply one record of the lists topic (entries); what it changed, in words. RuleError (nothing changed) if
        it is not valid, a list definition included: the lists topic holds entries only."""
        name, item, data = _read(key, value)
        if item is None:
            raise RuleError("key", f"{name!r} is a list definition's key: lists are defined in the list definitions "
                                   "topic, by the rules admin (fraud_rules.py lists create); the lists topic takes "
                                   "entries (NAME/VALUE) only (written by an earlier version? fraud_rules.py lists migrate)")
        snooze = name.startswith(SNOOZE_PREFIX)
        if snooze:
            check_name(name[len(SNOOZE_PREFIX):], "key")  # the rule it snoozes
        if data is None:
            entries = self.entries.get(name)
            if entries is not None:
                entries.pop(item, None)
                if not entries:
                    del self.entries[name]
                self._index()
            return f"{name}/{item} removed"
        entry = parse_entry(data)
        if (entry.list, entry.value) != (name, item):
            raise RuleError("key", f"the record's key is {name}/{item} but the entry is {entry.list}/{entry.value}")
        if snooze and (entry.expires_ms is None or entry.expires_ms - entry.added_ms > MAX_SNOOZE_S * 1000):
            raise RuleError("entry.expires_ms", f"a snooze expires within {MAX_SNOOZE_S // 86400} days of being added")
        if snooze and name not in self.specs:
            self.specs[name] = snooze_spec(name[len(SNOOZE_PREFIX):])
        self.entries.setdefault(name, {})[item] = entry
        self._index()
        until = f" until {utc(entry.expires_ms)}" if entry.expires_ms is not None else ""
        return f"{name}/{item} added by {entry.by}{until}"

    def _index(self) -> None:
        self._leveled = tuple(
            (attribute_name(spec.field), spec, self.entries[name])
            for name, spec in sorted(self.specs.items()) if spec.level != WATCH and self.entries.get(name)
        )

    def contains(self, name: str, value: Any) -> bool:
        """Whether ``value`` (a payment field's) is a live entry of the list ``name``."""
        entries = self.entries.get(name)
        if not entries or value is None:
            return False
        entry = entries.get(value if value.__class__ is str else _as_text(value))
        return entry is not None and entry.live(self.clock())

    def hits(self, payment: Payment) -> tuple[ListHit, ...]:
        """The live entries of lists with a level that the payment's fields are on, in list name order."""
        found: list[ListHit] | None = None
        now: float | None = None
        for attribute, spec, entries in self._leveled:
            value = getattr(payment, attribute)
            if value is None:
                continue
            entry = entries.get(value if value.__class__ is str else _as_text(value))
            if entry is None:
                continue
            if now is None:
                now = self.clock()
            if not entry.live(now):
                continue
            if found is None:
                found = []
            found.append(ListHit(spec.name, spec.level, spec.field, entry.value, spec.overridable, entry.by,
                                 entry.reason, entry.expires_ms, spec.rule))
        return () if found is None else tuple(found)

    def live_entries(self, name: str) -> list[ListEntry]:
        now = self.clock()
        return sorted((e for e in self.entries.get(name, {}).values() if e.live(now)), key=lambda e: e.value)


def _read(key: bytes | None, value: bytes | None) -> tuple[str, str | None, Any]:
    """A lists record's list name, entry value (None: a definition's key) and data (None: a tombstone); RuleError
    if the key or the JSON is not readable."""
    if not key:
        raise RuleError("key", "a list record needs a key: NAME for a list, NAME/VALUE for an entry")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise RuleError("key", "the key is not UTF-8") from None
    name, slash, item = text.partition("/")
    check_name(name, "key")
    data = None
    if value is not None:
        try:
            data = json.loads(value)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise RuleError("", f"not JSON: {exc}") from None
    return name, item if slash else None, data


def _as_text(value: Any) -> str:
    """How a number field's value is written on a list: 42, not 42.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


LISTS = ListBook()
"""The process's lists: what ``in_list`` conditions read and a detector applies (fraud_pipeline.live_lists fills it)."""

__all__ = [
    "ALLOW", "APPROVE", "BLOCK", "DECLINE", "LEVELS", "LISTS", "MAX_SNOOZE_S", "OUTCOMES", "REVIEW", "REVIEWED", "SNOOZE",
    "SNOOZE_PREFIX", "WATCH",
    "ListBook", "ListEntry", "ListHit", "ListSpec", "duration_s", "entry_key", "entry_record", "list_key", "list_record", "outcome",
    "parse_entry", "parse_spec", "snooze_spec",
]
