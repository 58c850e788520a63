"""Spark bronze on a table the direct writer also wrote: where it may resume, and when it must not."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from deltalake import CommitProperties, Transaction, write_deltalake

from periscope import get_settings
from periscope.errors import PeriscopeError
from spark_streaming.bronze import BronzeTarget, resume_offsets
from spark_streaming.bronze_direct import (
    PartitionBuffer,
    app_id,
    bronze_rows,
    ensure_bronze_table_direct,
)


def _checkpoint(folder, batch: int, offsets: dict[str, dict[str, int]]) -> None:
    """A Spark checkpoint's offsets file as Spark writes it: version, metadata, one line a source."""
    (folder / "offsets").mkdir(parents=True, exist_ok=True)
    lines = ["v1", json.dumps({"batchWatermarkMs": 0, "batchTimestampMs": 0}), json.dumps(offsets)]
    (folder / "offsets" / str(batch)).write_text("\n".join(lines))


def _direct_landed(path: str, topic: str, last: dict[int, int]) -> None:
    buffer = PartitionBuffer()
    for partition, offset in last.items():
        buffer.add(b"k", b"v", partition, offset, 0)
    write_deltalake(
        ensure_bronze_table_direct(path),
        bronze_rows(topic, buffer, datetime.now(UTC)),
        mode="append",
        commit_properties=CommitProperties(
            app_transactions=[Transaction(app_id(path, topic, p), o) for p, o in last.items()]
        ),
    )


def test_a_new_table_starts_from_the_earliest(tmp_path):
    target = BronzeTarget("t", "t-raw", str(tmp_path / "bronze"), str(tmp_path / "checkpoint"))
    assert resume_offsets(get_settings(), target) == "earliest"


def test_a_checkpoint_behind_the_direct_writer_is_an_error(tmp_path):
    target = BronzeTarget("t", "t-raw", str(tmp_path / "t_raw"), str(tmp_path / "checkpoint"))
    _checkpoint(tmp_path / "checkpoint", 0, {"t-raw": {"0": 10, "1": 20}})
    _checkpoint(tmp_path / "checkpoint", 1, {"t-raw": {"0": 40, "1": 20}})
    _direct_landed(target.table_path, "t-raw", {0: 39, 1: 19})  # within what Spark planned
    assert resume_offsets(get_settings(), target) == "earliest"  # the checkpoint rules

    _direct_landed(target.table_path, "t-raw", {1: 20})  # past the planned end of partition 1
    with pytest.raises(PeriscopeError, match=r"t-raw\[1\].*up to 20, past the 20.*direct engine"):
        resume_offsets(get_settings(), target)
