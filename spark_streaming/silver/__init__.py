"""Silver: validated observations, quarantine + DLQ, deduplication and sliding-window features.

One module per step: `columns` (every silver table's columns, from the contract), `validate`
(the Spark parse + checks), `classify` (dedupe and late marking, pure Arrow), `process` (one
micro-batch: the named steps and their idempotent delta-rs commits, and the streaming query),
`direct` (the same batches without Spark: bronze's Delta log read with delta-rs, a write-ahead
plan log, Arrow validation).
"""

from spark_streaming.silver.classify import classify, dedupe_keys
from spark_streaming.silver.columns import observation_columns, spark_schema, table_columns
from spark_streaming.silver.direct import DirectSilver, run_silver_direct
from spark_streaming.silver.process import (
    BatchProcessor,
    SilverTables,
    ensure_silver_tables,
    process_batch,
    run_silver,
    start_silver,
)
from spark_streaming.silver.validate import REASON_CODES, validate

__all__ = [
    "REASON_CODES",
    "BatchProcessor",
    "DirectSilver",
    "SilverTables",
    "classify",
    "dedupe_keys",
    "ensure_silver_tables",
    "observation_columns",
    "process_batch",
    "run_silver",
    "run_silver_direct",
    "spark_schema",
    "start_silver",
    "table_columns",
    "validate",
]
