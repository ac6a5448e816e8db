"""Anchoring a deployment's query log in the service's transparency log, and the DAWN
evidence an owner builds against an anchored head.

The server signs its log's head (size and root) with the receipt key its serving card
names: a registrable statement (`verifier.dawn_evidence`). With ``--registry`` it
registers the serving card at start and a new head every ``--anchor-every`` seconds when
the log grew; any client can also fetch the current signed head (``GET /v1/log/head``) and
register it itself. A head is signed only once every row under it is committed, so an
anchored head can always be rebuilt from the log (`verifier.dawn_evidence.build_evidence`).
"""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

from cards.errors import LaminateError
from cards.files import write_atomic
from verifier import dawn_evidence


def signed_head(server) -> bytes:
    """The log's current head, every row under it committed, signed by the receipt key."""
    size, root = server.log.durable_head()
    return dawn_evidence.sign_head(server.d.receipt_key, server.d.card.digest, size, root)


def post(url: str, token: str, body: bytes, timeout: float = 30.0) -> dict:
    """POST raw bytes to the service; its JSON answer, or LaminateError saying why not."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/cbor"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read(1 << 20))
    except urllib.error.HTTPError as exc:
        detail = exc.read(4096).decode("utf-8", "replace")
        raise LaminateError(f"{url}: HTTP {exc.code}: {detail[:300]}") from None
    except (OSError, ValueError) as exc:
        raise LaminateError(f"{url}: {exc}") from None


class Anchorer:
    """Registers the serving card once, then the log's signed head whenever it grew."""

    def __init__(self, server, registry: str, token: str, every_s: float, state: Path):
        self.server, self.registry, self.token = server, registry.rstrip("/"), token
        self.every_s, self.state = float(every_s), Path(state)
        self._stop = threading.Event()
        self._anchored_size = -1
        self._thread = threading.Thread(target=self._loop, name="anchor", daemon=True)

    def register_card(self) -> dict:
        answer = post(f"{self.registry}/v1/cards", self.token, self.server.d.card_bytes)
        write_atomic(self.state / "serving-card.registration.json",
                     json.dumps(answer, indent=2).encode())
        return answer

    def anchor(self) -> dict | None:
        """Register the current head if the log grew since the last one; its registration."""
        head = signed_head(self.server)
        size = dawn_evidence.open_head(head, self.server.d.card)[0]
        if size == self._anchored_size:
            return None
        answer = post(f"{self.registry}/v1/serving-heads", self.token, head)
        folder = self.state / "anchors"
        folder.mkdir(exist_ok=True)
        write_atomic(folder / f"{size}.head", head)
        write_atomic(folder / f"{size}.json", json.dumps(answer, indent=2).encode())
        self._anchored_size = size
        return answer

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.anchor()
            except LaminateError as exc:      # the next period tries again
                print(f"laminate serve-model: anchoring failed: {exc}", flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
