"""The console's writes on the real cluster: each change with its audit record, or neither (once per client).

The finding this answers: a list entry was written, then its audit record, which could fail after the block was live
(a 400 KB reason made a 1.2 MB audit record, over the topic's limit). The console's API now caps reasons, so the
test calls the console's case work directly with such a reason: its audit record cannot be written, and neither
the list entry nor the audit record reaches a reader (every reader reads committed records only).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from fraud_pipeline.config import ConnectionSettings, Settings
from fraud_pipeline.console.casework import CaseWork
from fraud_pipeline.errors import PipelineError
from fraud_pipeline.rules.lists import entry_key
from tests.integration.conftest import Pipeline, read_topic

pytestmark = pytest.mark.integration


def test_a_list_entry_whose_audit_record_cannot_be_written_is_not_written_either(pipeline: Pipeline) -> None:
    pipeline.run("fraud_rules", "lists", "create", "mules", "--field", "TO", "--level", "block")
    settings = Settings(ConnectionSettings(tuple(pipeline.bootstrap.split(",")), pipeline.client), pipeline.topics)
    cases = CaseWork(settings, lambda: "test", transactional_id=f"fraud-console-test-{pipeline.suffix}")
    stop = threading.Event()
    reader = threading.Thread(target=cases.run, args=(stop,), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while "mules" not in cases.book.specs:
            assert time.monotonic() < deadline, f"the console never read the list: {cases.error}"
            time.sleep(0.2)

        with pytest.raises(PipelineError, match="nothing of it was written"):
            cases.add_to_list("ada", "mules", "PAYEE-HUGE", None, "x" * 1_200_000)
        assert "PAYEE-HUGE" not in cases.book.entries.get("mules", {})

        cases.add_to_list("ada", "mules", "PAYEE-OK", None, "known mule")  # the console writes on afterwards
    finally:
        stop.set()
        reader.join(30)
    entries = {record.key for record in read_topic(pipeline.bootstrap, pipeline.topics.lists)}
    assert entry_key("mules", "PAYEE-HUGE") not in entries
    assert entry_key("mules", "PAYEE-OK") in entries
    audit = [json.loads(record.value) for record in read_topic(pipeline.bootstrap, pipeline.topics.audit)]
    assert [(a["action"], a["target"]) for a in audit] == [("list-add", "mules/PAYEE-OK")]
