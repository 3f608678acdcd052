"""The consume-process-commit loop of the detector and processors, and its guarantees.

The stage polls batches and handles every record (sending routed records and
dead letters through an Output, buffering its printed lines). About every
commit interval (``--commit-interval-ms``, 100 ms by default, or at
``commit_records`` pending records) the Delivery makes what was handled
durable and commits the input offsets: one commit, or one transaction, is
shared by every poll of the interval. If that fails everything since the last
commit is rolled back, the consumer is rewound, and the records are read again.

- AtLeastOnce: the output acknowledged, then printed, then the offsets
  committed. A crash between the two repeats what was not committed; nothing
  is ever skipped. kafka-python's sends settle one by one as their answers
  come in; librdkafka's (FlushedAtLeastOnce) by a flush per commit interval on
  a helper thread, so no delivered record calls back into Python.
- ExactlyOnce: one Kafka transaction per commit interval holds the routed
  records and the input offsets (``send_offsets_to_transaction``); a
  read_committed reader sees every input record's output exactly once across
  crashes of the detector and of a broker (tests/chaos). The commit runs on a
  helper thread while the loop reads on; what is handled meanwhile goes into
  the next transaction. Printed lines are
  outside the transaction: records re-read after a failure may print again, or
  not at all.

A rebalance commits what is pending before it hands partitions over (see
Assignment), so their new owner starts where this member stopped.

The package, one module per concern:

    output      Output (the producer a stage writes through), DeadLetters, BatchError
    handler     RecordHandler (what a stage does with each record), LineBuffer, decode_or_reject
    delivery    Delivery: AtLeastOnce, FlushedAtLeastOnce, ExactlyOnce
    checkpoint  Checkpoint: what is pending since the last commit, when a commit is due, commit or roll back
    loop        run_consumer (poll, handle, commit) and Assignment (the rebalance callbacks)
    runner      run_stage: one stage process, from its clients to its exit status
"""

from .delivery import AtLeastOnce, Delivery, ExactlyOnce, FlushedAtLeastOnce
from .handler import HandlerFactory, LineBuffer, LineHandler, RecordHandler, decode_or_reject
from .loop import Assignment, run_consumer
from .output import BatchError, DeadLetters, Output
from .runner import run_stage

__all__ = [
    "Assignment", "AtLeastOnce", "BatchError", "DeadLetters", "Delivery", "ExactlyOnce", "FlushedAtLeastOnce", "HandlerFactory",
    "LineBuffer", "LineHandler", "Output",
    "RecordHandler", "decode_or_reject", "run_consumer", "run_stage",
]
