"""Fraud rules: pure Python, no Kafka.

- ``conditions``, ``definitions``: rules as data, validated;
- ``aggregates``: bounded, bucketed per-key aggregates in a key-value table, the state of stateful rules;
- ``engine``: decides a payment with a rule set and explains the decision.
"""

from ..errors import RuleError
from .aggregates import ALLOWED_LATENESS_MS, META_KEY, Entity, EntityTable, MemoryTable, decode_entity, encode_entity
from .definitions import MODES, ORIGINAL, RULESETS_DIR, Rule, RuleSet, load_ruleset, parse_rule, parse_ruleset
from .engine import Decision, Engine, FiredRule

__all__ = [
    "ALLOWED_LATENESS_MS", "META_KEY", "MODES", "ORIGINAL", "RULESETS_DIR", "Decision", "Engine", "Entity", "EntityTable",
    "FiredRule", "MemoryTable", "Rule", "RuleError", "RuleSet", "decode_entity", "encode_entity", "load_ruleset",
    "parse_rule", "parse_ruleset",
]
