"""Batched log writes, as a tiled log integrates: callers on many threads hand in jobs,
one integrator thread runs them together in one transaction every ``interval`` seconds
or ``max_batch`` jobs, so the transaction, the log-head row lock and the tile writes
are paid once per batch, not once per entry. A caller returns only after its batch
committed, so an acknowledged entry survives a crash.

A job is ``fn(session, leaves)``: it reads and writes rows in ``session`` and appends
leaves through ``leaves.add`` (a ``tlog.LeafBatch``). Each job runs in a savepoint of
its own, so one job that raises (a refused registration) rolls back only itself and
its caller gets the exception; the rest of the batch commits."""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from cards.errors import LaminateError

from .tlog import LeafBatch, TransparencyLog

Job = Callable[[Any, LeafBatch], Any]


class Integrator:
    def __init__(self, log: TransparencyLog, interval: float = 0.02, max_batch: int = 1024):
        if not 0 < interval <= 10 or not 1 <= max_batch <= 65_536:
            raise LaminateError("log batching: need 0 < interval <= 10 s and "
                                "1 <= batch size <= 65536")
        self.log, self.interval, self.max_batch = log, interval, max_batch
        self.batches = 0
        self._queue: list[tuple[Job | tuple, Future, bool]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-integrator", daemon=True)
        self._thread.start()

    def submit(self, job: Job | tuple[str, str, bytes], isolated: bool = True) -> Future:
        """Queue a job (or a plain ``(kind, ref, data)`` leaf); the future holds the job's
        result (a leaf's index) once its batch committed, or the exception."""
        future: Future = Future()
        with self._cv:
            if self._closed:
                raise LaminateError("log batching: the integrator is closed")
            self._queue.append((job, future, isolated))
            if len(self._queue) >= self.max_batch:
                self._cv.notify()
        return future

    def run(self, job: Job, timeout: float = 120.0):
        """Run ``job`` in the next batch and return its result after the commit."""
        return self.submit(job).result(timeout)

    def add(self, kind: str, ref: str, data: bytes, timeout: float = 120.0) -> int:
        """Append one leaf; returns its index once the batch holding it committed."""
        return self.submit((kind, ref, data), isolated=False).result(timeout)

    def close(self) -> None:
        """Commit what is queued, then stop."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or len(self._queue) >= self.max_batch,
                                  timeout=self.interval)
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
                if not batch and self._closed:
                    return
            if batch:
                self._commit(batch)

    def _commit(self, batch) -> None:
        outcomes: list[tuple[Future, bool, Any]] = []
        try:
            with self.log.db.write() as (session, head):
                leaves = LeafBatch(self.log, session, head, immediate=False)
                for job, future, isolated in batch:
                    if not isolated:            # a plain leaf cannot fail on its own
                        outcomes.append((future, True, leaves.add(*job)[0]))
                        continue
                    leaves.flush_rows()         # earlier leaves stay outside the savepoint
                    mark, leaves.immediate = leaves.mark(), True
                    try:
                        with session.begin_nested():
                            outcomes.append((future, True, job(session, leaves)))
                    except Exception as exc:    # noqa: BLE001 - handed to its caller
                        leaves.undo(mark)
                        outcomes.append((future, False, exc))
                    leaves.immediate = False
                leaves.finish()
        except BaseException as exc:            # every caller of the batch learns it failed
            for _, future, _ in batch:
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        for future, ok, value in outcomes:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
