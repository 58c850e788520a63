"""The direct bronze writer and the direct silver engine as benches run them: each in a spawned
process of its own (as `periscope up` runs them), on a contract the bench made up (a copy under
a fresh name, passed to the processes rather than registered), until the parent says stop."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from typing import Any

from periscope.contracts import SourceContract
from periscope.settings import Settings


def _stop_when_set(stop: Any, flag: threading.Event) -> None:
    """Set a thread event of this process once the parent's multiprocessing event is set."""

    def relay() -> None:
        stop.wait()
        flag.set()

    threading.Thread(target=relay, daemon=True).start()


def _bronze(settings: Settings, contract: SourceContract, stop: Any) -> None:
    from spark_streaming.bronze import BronzeTarget
    from spark_streaming.bronze_direct import DirectBronzeWriter

    writer = DirectBronzeWriter(
        settings, [BronzeTarget.for_contract(settings, contract)], group_id=f"bench-{contract.name}"
    )
    _stop_when_set(stop, writer.stop_requested)
    writer.run()


def _silver(settings: Settings, contract: SourceContract, stop: Any, verbose: bool) -> None:
    from spark_streaming.silver import SilverTables
    from spark_streaming.silver.direct import DirectSilver, follow_direct

    if verbose:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
        logging.getLogger("spark_streaming.silver").setLevel(logging.INFO)
    engine = DirectSilver(settings, contract, SilverTables.for_contract(settings, contract))
    flag = threading.Event()
    _stop_when_set(stop, flag)
    try:
        follow_direct([engine], stop=flag, poll_seconds=settings.silver_poll_seconds)
    finally:
        engine.close()


def start_direct(
    settings: Settings, contract: SourceContract, *, verbose: bool = False
) -> tuple[Any, list[Any]]:
    """Bronze and silver, direct engines, each in a spawned process; (stop event, processes).
    Set the event, then join the processes: each finishes its batch in flight first."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    processes = [
        context.Process(target=_bronze, args=(settings, contract, stop)),
        context.Process(target=_silver, args=(settings, contract, stop, verbose)),
    ]
    for process in processes:
        process.start()
    return stop, processes


def stop_direct(stop: Any, processes: list[Any], timeout_s: float = 60.0) -> None:
    """Ask the processes of `start_direct` to stop and wait for each (its batch in flight
    finishes first); one still running after `timeout_s` is terminated."""
    stop.set()
    for process in processes:
        process.join(timeout_s)
        if process.is_alive():
            process.terminate()
