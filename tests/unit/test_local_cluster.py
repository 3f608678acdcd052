"""The local cluster tool's own decisions, without starting a broker."""

from __future__ import annotations

import uuid

import pytest

from devcluster import cluster as local_cluster


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # A first byte of 0xF8-0xFB encodes to a leading "-", which kafka-storage would read as an option.
    drawn = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(local_cluster.uuid, "uuid4", lambda: next(drawn))
    cluster_id = local_cluster.new_cluster_id()
    assert cluster_id == "AQEBAQEBAQEBAQEBAQEBAQ"
    assert next(drawn, None) is None, "the id starting with a dash was not drawn again"
