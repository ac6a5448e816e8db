"""Batched log appends: callers on many threads hand in leaves, one integrator thread
commits them together every ``interval`` seconds or ``max_batch`` leaves, so the cost of
a transaction (and of the log's row lock) is shared by a whole batch. A caller returns
only after its batch committed, so an acknowledged leaf survives a crash."""
from __future__ import annotations

import threading
from concurrent.futures import Future

from cards.errors import LaminateError

from .tlog import TransparencyLog


class Integrator:
    def __init__(self, log: TransparencyLog, interval: float = 0.05, max_batch: int = 1024):
        if not 0 < interval <= 10 or not 1 <= max_batch <= 65_536:
            raise LaminateError("integrator: need 0 < interval <= 10 s, 1 <= max_batch <= 65536")
        self.log, self.interval, self.max_batch = log, interval, max_batch
        self.batches = 0
        self._queue: list[tuple[str, str, bytes, Future]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-integrator", daemon=True)
        self._thread.start()

    def add(self, kind: str, ref: str, data: bytes, timeout: float = 60.0) -> int:
        """Append one leaf; returns its index once the batch holding it committed."""
        future: Future = Future()
        with self._cv:
            if self._closed:
                raise LaminateError("integrator: closed")
            self._queue.append((kind, ref, data, future))
            if len(self._queue) >= self.max_batch:
                self._cv.notify()
        return future.result(timeout)

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
        try:
            with self.log.db.write() as (session, head):
                out = self.log.append_many(session, head, [item[:3] for item in batch])
        except Exception as exc:       # every caller of the batch learns it failed
            for item in batch:
                item[3].set_exception(exc)
            return
        self.batches += 1
        for item, (index, _) in zip(batch, out):
            item[3].set_result(index)
