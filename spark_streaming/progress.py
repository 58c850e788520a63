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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from periscope.metrics import record_progress

if TYPE_CHECKING:
    from pyspark.sql.streaming import StreamingQuery

__all__ = ["follow", "follow_until_stopped", "stop_on_signals"]

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


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event that SIGINT or SIGTERM sets while the block runs (previous handlers restored).

    The handler only sets the flag (an exception raised inside a py4j call would break the
    gateway); a second signal raises KeyboardInterrupt, to stop at once. Installed before the
    slow start-up, so a stop asked for then waits for the queries instead of breaking it.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def follow_until_stopped(
    queries: list[StreamingQuery], *, stop: threading.Event | None = None
) -> dict[str, int]:
    """`follow`, where Ctrl-C or SIGTERM (what a supervisor sends) stops the queries between
    micro-batches, not inside one: a batch in flight finishes and commits first.

    `stop`: an event from `stop_on_signals` entered before the queries started.
    """
    if stop is not None:
        if threading.current_thread() is threading.main_thread():
            # SparkContext installed its own SIGINT handler (cancel jobs, raise) since: undo that
            signal.signal(signal.SIGINT, signal.getsignal(signal.SIGTERM))
        return follow(queries, stop=stop)
    with stop_on_signals() as own_stop:
        return follow(queries, stop=own_stop)


def _stop_between_batches(queries: list[StreamingQuery]) -> None:
    log.info("stopping %s after their current micro-batch", ", ".join(q.name for q in queries))
    for query in queries:
        deadline = time.monotonic() + 600.0
        # isTriggerActive: a batch is being planned, processed or committed
        while query.isActive and query.status["isTriggerActive"] and time.monotonic() < deadline:
            time.sleep(0.2)
        query.stop()
