"""The detector's topology: its plan (stages, internal topics, changelogs) and the stages of the decision path.

One module per concern:

    plan      Plan: which stages, which topics join them, which changelogs keep their state
    progress  Progress: how far each stage has come, kept with its state
    handler   StateHandler: the state methods every stage shares (stores, changelog, lines, held-back commits)
    anchor    Anchor: payments in; the account's rules; probes and tickets out
    keys      KeyStage: the rules over other keys, each key partition in the defined order
    decide    Decider: tickets and answers joined, each payment decided in its partition's offset order
    route     Router: a decision to the fraud or legit topic, its header and its line
    purge     Purger: the internal topics' records deleted once their reader committed past them
    chain     Chain: the stages stop together, or one after the other when idle

The order they decide in is defined, and decided whole by one function, in
fraud_pipeline.rules.order.
"""

from .anchor import Anchor
from .chain import Chain
from .decide import Decider
from .handler import StateHandler
from .keys import KeyStage
from .plan import DEFAULT_GROUP, Plan, StagePlan, plan, stage_settings
from .progress import decode_state, encode_state
from .purge import Purger
from .route import Router, decision_header

__all__ = [
    "DEFAULT_GROUP", "Anchor", "Chain", "Decider", "KeyStage", "Plan", "Purger", "Router", "StagePlan",
    "StateHandler", "decision_header", "decode_state", "encode_state", "plan", "stage_settings",
]
