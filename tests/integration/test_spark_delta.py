"""Spark with Delta and the Kafka connector from the jars `make setup` fetched."""

from __future__ import annotations

import uuid

import pytest
from deltalake import DeltaTable
from kafka import KafkaProducer

from periscope import duckdb_lake
from periscope.topics import TopicSpec, create_topics

pytestmark = pytest.mark.integration


def test_spark_writes_delta_that_delta_rs_and_duckdb_read(spark, tmp_path):
    path = str(tmp_path / "readings")
    df = spark.createDataFrame(
        [
            ("s1", "2024-01-01 00:00:00", 1.25),
            ("s1", "2024-01-01 01:00:00", 2.5),
            ("s2", "2024-01-01 00:00:00", -3.0),
        ],
        "station_id string, ts string, value double",
    ).selectExpr("station_id", "cast(ts as timestamp) as ts", "value")
    df.write.format("delta").partitionBy("station_id").save(path)

    table = DeltaTable(path)
    protocol = table.protocol()
    # Nothing delta-rs, polars or DuckDB cannot read: no deletion vectors, no column mapping.
    assert protocol.min_reader_version == 1
    assert not (protocol.reader_features or [])
    assert table.metadata().configuration.get("delta.enableDeletionVectors") == "false"
    rows = (
        table.to_pyarrow_table()
        .sort_by([("station_id", "ascending"), ("ts", "ascending")])
        .to_pylist()
    )
    assert [(r["station_id"], r["value"]) for r in rows] == [
        ("s1", 1.25),
        ("s1", 2.5),
        ("s2", -3.0),
    ]

    con = duckdb_lake.connect()
    got = con.sql(
        f"select station_id, count(*), sum(value) from delta_scan('{path}') group by all order by 1"
    ).fetchall()
    assert got == [("s1", 2, 3.75), ("s2", 1, -3.0)]


def test_spark_reads_kafka_through_the_connector_jar(spark, services):
    topic = f"test-spark-{uuid.uuid4().hex[:8]}"
    create_topics(services, [TopicSpec(topic, 2, 1)])
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap_servers, acks="all")
    for i in range(7):
        producer.send(topic, key=f"k{i % 3}".encode(), value=f"v{i}".encode())
    producer.flush()
    producer.close()

    rows = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", services.kafka_bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
        .selectExpr("cast(value as string) as value", "partition", "offset")
        .collect()
    )
    assert sorted(r.value for r in rows) == [f"v{i}" for i in range(7)]
    assert len({(r.partition, r.offset) for r in rows}) == 7
