"""Follow running streaming queries: log each micro-batch and total the rows they read.

Polls `query.recentProgress` from the driver's main thread instead of registering a Python
`StreamingQueryListener`: listener events arrive asynchronously through a py4j callback
server, so the last batches can be missed (or fail) when the process ends.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from periscope.metrics import record_progress

if TYPE_CHECKING:
    from pyspark.sql.streaming import StreamingQuery

__all__ = ["follow", "follow_until_stopped"]

log = logging.getLogger("spark_streaming")


def _field(progress, name: str):  # type: ignore[no-untyped-def]
    """Progress entries are objects in PySpark 4 and dicts in older versions."""
    return progress[name] if isinstance(progress, dict) else getattr(progress, name)


def follow(
    queries: list[StreamingQuery], *, poll_s: float = 1.0, stop: threading.Event | None = None
) -> dict[str, int]:
    """Block until every query stops; return {query name: input rows processed}.

    Raises the first query failure (the others are stopped first). When `stop` is set, the
    queries are stopped between micro-batches.
    """
    last_batch: dict[str, int] = defaultdict(lambda: -1)
    totals: dict[str, int] = defaultdict(int)

    def sweep() -> None:
        for query in queries:
            name = query.name
            for progress in query.recentProgress:
                batch, rows = (
                    int(_field(progress, "batchId")),
                    int(_field(progress, "numInputRows")),
                )
                if batch <= last_batch[name]:
                    continue
                last_batch[name] = batch
                record_progress(name, progress)  # Prometheus: rows, duration, offsets behind
                if rows:
                    totals[name] += rows
                    rate = _field(progress, "processedRowsPerSecond") or 0.0
                    log.info(
                        "%s: batch %d, +%d rows (%d this run), %.0f rows/s",
                        name,
                        batch,
                        rows,
                        totals[name],
                        rate,
                    )

    while any(q.isActive for q in queries):
        sweep()
        failed = [q for q in queries if not q.isActive and q.exception() is not None]
        if failed:
            break
        if stop is not None and stop.is_set():
            _stop_between_batches(queries)
            continue
        time.sleep(poll_s)
    sweep()
    for query in queries:
        if query.exception() is not None:
            for other in queries:
                if other.isActive:
                    other.stop()
            raise RuntimeError(f"streaming query {query.name} failed: {query.exception()}")
    return {q.name: totals[q.name] for q in queries}


def follow_until_stopped(queries: list[StreamingQuery]) -> dict[str, int]:
    """`follow`, where Ctrl-C or SIGTERM stops the queries between micro-batches, not inside one.

    SIGTERM is what a supervisor sends; it is handled like Ctrl-C. The handler only sets a
    flag (an exception raised inside a py4j call would break the gateway); a micro-batch in
    flight finishes and commits before its query stops. A second signal stops at once.
    """
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
    return follow(queries, stop=stop)


def _stop_between_batches(queries: list[StreamingQuery]) -> None:
    log.info("stopping %s after their current micro-batch", ", ".join(q.name for q in queries))
    for query in queries:
        deadline = time.monotonic() + 600.0
        # isTriggerActive: a batch is being planned, processed or committed
        while query.isActive and query.status["isTriggerActive"] and time.monotonic() < deadline:
            time.sleep(0.2)
        query.stop()
