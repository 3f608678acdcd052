"""Rules over keys other than the account: re-keyed through internal topics, counted across every partition."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from fraud_pipeline.payment import encode
from tests.integration.conftest import Pipeline, read_topic, summary_count, wait_for_group
from tests.integration.test_rules import payment

pytestmark = pytest.mark.integration

DEVICE_RULES = """\
threshold: 1
rules:
  - id: shared-device
    description: a device that more than 3 accounts paid from within an hour
    aggregate: {function: distinct, field: ACCOUNT, group_by: DEVICE, window_s: 3600, op: ">", value: 3}
  - id: busy-payee
    mode: shadow
    description: a payee paid by more than 5 accounts within an hour
    aggregate: {function: distinct, field: ACCOUNT, group_by: TO, window_s: 3600, op: ">", value: 5}
  - id: burst
    aggregate: {function: count, group_by: ACCOUNT, window_s: 120, op: ">", value: 3}
"""


def test_a_device_shared_by_accounts_on_every_partition_is_counted_whole(
    pipeline: Pipeline, raw_producer: KafkaProducer, tmp_path: Path, figures: list[dict[str, Any]],
) -> None:
    rules = tmp_path / "device.yaml"
    rules.write_text(DEVICE_RULES)
    detector = pipeline.start("fraud_detector", "--rules", str(rules), "--idle-timeout", "8", "--quiet",
                              "--state-dir", str(tmp_path / "s"), group="detector")
    group = pipeline.group("detector")
    for stage in (group, f"{group}-keys", f"{group}-decide"):
        wait_for_group(pipeline.bootstrap, stage, 1, detector)
    # 12 accounts (their payments spread over the 6 partitions) on one device, 6 others on a device each.
    shared = [dataclasses.replace(payment(f"ACC-D{n:02d}", to=f"mule-{n % 2}"), device="dev-shared") for n in range(12)]
    alone = [dataclasses.replace(payment(f"ACC-E{n:02d}"), device=f"dev-{n}") for n in range(6)]
    # one account paying 5 times in a row, from 5 devices: its burst is seen by the account's stage
    burst = [dataclasses.replace(payment("ACC-B00", to="shop-b"), device=f"dev-b{n}") for n in range(5)]
    sent = shared + alone + burst
    for p in sent:
        raw_producer.send(pipeline.topics.payments, key=(p.account or "").encode(), value=encode(p))
    raw_producer.flush()
    _, stderr = detector.communicate(timeout=120)
    assert detector.returncode == 0, stderr[-3000:]
    assert summary_count(stderr, "fraud_detector") == len(sent)
    assert "-> anchor ->" in stderr and "keys (DEVICE, TO)" in stderr

    routed = {}
    latency_ms = []
    sent_values = {p.payment_id: encode(p) for p in sent}
    for topic, fraud in ((pipeline.topics.fraud, True), (pipeline.topics.legit, False)):
        for record in read_topic(pipeline.bootstrap, topic):
            value = json.loads(record.value)
            assert value["PAYMENT_ID"] not in routed, "routed twice"
            routed[value["PAYMENT_ID"]] = (fraud, value["DECISION"], record.key)
            # the input's bytes, the decision appended: the original key kept through the hops
            assert record.value.startswith(sent_values[value["PAYMENT_ID"]][:-1])
            assert record.key == value["ACCOUNT"].encode()
            latency_ms.append(record.timestamp - value["TIMESTAMP_MS"])
    assert set(routed) == set(sent_values)
    # Whatever partitions they came from, the device's 4th to 12th accounts are caught.
    counts = sorted(int(r["reason"].split("=")[1].split(" ")[0]) for fraud, d, _ in routed.values() for r in d["rules"]
                    if r["id"] == "shared-device")
    assert counts == list(range(4, 13))
    assert sum(routed[p.payment_id][0] for p in shared) == 9
    for _, decision, _ in routed.values():
        for fired in decision["rules"]:
            if fired["id"] == "shared-device":
                assert fired["reason"].endswith("in 1h > 3 (DEVICE=dev-shared)")
    assert not any(fraud for p in alone for fraud, _, _ in [routed[p.payment_id]])
    # The payee rule (shadow) ran in its own stage and its reasons reached the decision too.
    assert any(r["id"] == "busy-payee" for _, d, _ in routed.values() for r in d["rules"])
    # The account's rule decided with them, in the account's order: the burst's 4th and 5th payments fire it.
    bursts = [[r["reason"] for r in routed[p.payment_id][1]["rules"] if r["id"] == "burst"] for p in burst]
    assert bursts[:3] == [[], [], []] and [reasons[0].split(" ")[0] for reasons in bursts[3:]] == ["count=4", "count=5"], bursts
    assert all(reasons[0].endswith("(ACCOUNT=ACC-B00)") for reasons in bursts[3:]), bursts
    assert [routed[p.payment_id][0] for p in burst] == [False, False, False, True, True]
    figures.append(dict(test=f"rules over DEVICE and TO: anchor, keys, decide ({pipeline.client})", payments=len(sent),
                        send_to_routed_p50_ms=statistics.median(latency_ms), send_to_routed_max_ms=max(latency_ms)))
