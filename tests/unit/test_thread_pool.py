"""The server's thread pool runs all its threads from the start, so no job ever starts one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from dg_lsp.server.thread_pool import start_all_workers


def test_every_worker_runs_before_any_request() -> None:
    pool = ThreadPoolExecutor(max_workers=4)
    try:
        assert start_all_workers(pool) == 4
        threads = set(pool._threads)
        results = [pool.submit(lambda i=i: i * i) for i in range(50)]  # noqa: B023
        assert [job.result(10) for job in results] == [i * i for i in range(50)]
        assert set(pool._threads) == threads  # served by the threads started up front
    finally:
        pool.shutdown()
