"""The server's worker threads, all started at start-up.

pygls reads stdin through the server's ``ThreadPoolExecutor``, which starts a thread lazily
whenever a job finds none idle. A thread started late can fail (``can't start new thread``
when memory is short: a new thread needs its stack) and that failure inside pygls's reader ends
the server. Started in full while memory is plentiful, the pool never needs another thread.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

#: How long start-up waits for the pool's threads to come up (seconds).
START_TIMEOUT_S = 30.0


def start_all_workers(pool: ThreadPoolExecutor) -> int:
    """Start every thread ``pool`` may use (each job blocks until all are running); returns how many run."""
    workers = int(pool._max_workers)  # noqa: SLF001 - the executor exposes no public size
    barrier = threading.Barrier(workers + 1)
    jobs = [pool.submit(barrier.wait, START_TIMEOUT_S) for _ in range(workers)]
    barrier.wait(START_TIMEOUT_S)
    for job in jobs:
        job.result(START_TIMEOUT_S)
    return len(pool._threads)  # noqa: SLF001
