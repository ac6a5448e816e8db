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
from typing import Any

from cards.errors import LaminateError

from .tlog import LeafBatch, TransparencyLog

Job = Callable[[Any, LeafBatch], Any]


class Ticket:
    """A caller's claim on its job's outcome: cheaper than a Future (no lock of its
    own), as a bulk append makes one per leaf; ``result`` waits for the commit."""
    __slots__ = ("_cv", "finished", "value", "error")

    def __init__(self, cv: threading.Condition):
        self._cv, self.finished, self.value, self.error = cv, False, None, None

    def result(self, timeout: float | None = None):
        if not self.finished:
            with self._cv:
                if not self._cv.wait_for(lambda: self.finished, timeout):
                    raise LaminateError(f"log batching: not committed within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.value


class Integrator:
    def __init__(self, log: TransparencyLog, interval: float = 0.02, max_batch: int = 1024):
        if not 0 < interval <= 10 or not 1 <= max_batch <= 65_536:
            raise LaminateError("log batching: need 0 < interval <= 10 s and "
                                "1 <= batch size <= 65536")
        self.log, self.interval, self.max_batch = log, interval, max_batch
        self.batches = 0
        self._queue: list[tuple[Job | tuple, Ticket, bool]] = []
        self._cv = threading.Condition()
        self._done = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-integrator", daemon=True)
        self._thread.start()

    def submit(self, job: Job | tuple[str, str, bytes], isolated: bool = True) -> Ticket:
        """Queue a job (or a plain ``(kind, ref, data)`` leaf); the ticket holds the job's
        result (a leaf's index) once its batch committed, or the exception."""
        future = Ticket(self._done)
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
        outcomes: list[tuple[Ticket, Any, BaseException | None]] = []
        try:
            with self.log.db.write() as (session, head):
                leaves = LeafBatch(self.log, session, head, immediate=False)
                for job, ticket, isolated in batch:
                    if not isolated:            # a plain leaf cannot fail on its own
                        outcomes.append((ticket, leaves.add(*job)[0], None))
                        continue
                    leaves.flush_rows()         # earlier leaves stay outside the savepoint
                    mark, leaves.immediate = leaves.mark(), True
                    try:
                        with session.begin_nested():
                            outcomes.append((ticket, job(session, leaves), None))
                    except Exception as exc:    # noqa: BLE001 - handed to its caller
                        leaves.undo(mark)
                        outcomes.append((ticket, None, exc))
                    leaves.immediate = False
                leaves.finish()
        except BaseException as exc:            # every caller of the batch learns it failed
            outcomes = [(ticket, None, exc) for _, ticket, _ in batch]
            if not isinstance(exc, Exception):
                self._answer(outcomes)
                raise
        else:
            self.batches += 1
        self._answer(outcomes)

    def _answer(self, outcomes) -> None:
        for ticket, value, error in outcomes:
            ticket.value, ticket.error, ticket.finished = value, error, True
        with self._done:
            self._done.notify_all()
