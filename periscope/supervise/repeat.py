"""Re-run a one-shot command on an interval, as one long-running supervised process.

`python -m periscope.supervise.repeat --every 60 -- periscope ingest replay --follow-clock ...`
runs the command now and then every 60 s (a run that fails is logged and tried again next
time). SIGTERM or SIGINT lets a run in progress finish (a follow-clock replay saves its state
only after Kafka acknowledged every record) and then exits 0.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["main", "repeat"]


def repeat(command: Sequence[str], *, every_s: float, stop: threading.Event) -> int:
    """Run `command` every `every_s` seconds until `stop` is set; returns the runs made."""
    runs = 0
    while not stop.is_set():
        started = time.monotonic()
        # The child ignores SIGINT/SIGTERM sent to us: its run completes, then we stop.
        code = subprocess.run(
            list(command), check=False, preexec_fn=_ignore_stop_signals
        ).returncode
        runs += 1
        if code != 0:
            print(f"repeat: run {runs} exited {code}; trying again in {every_s:g} s", flush=True)
        stop.wait(max(0.0, every_s - (time.monotonic() - started)))
    return runs


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m periscope.supervise.repeat",
        description="Run a command now and then every --every seconds until SIGTERM/SIGINT.",
    )
    parser.add_argument("--every", type=float, required=True, help="Seconds between run starts.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run.")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.every <= 0:
        parser.error("give --every > 0 and a command after --")
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        print(f"repeat: {signal.Signals(signum).name}: stopping after the current run", flush=True)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    repeat(command, every_s=args.every, stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
