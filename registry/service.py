"""The service's state and rules: database, log, key and policy shared by every
request of one process, and the writes that change the log.

Providers register cards (appraised first; only accepted cards are logged), deployers
verify them against a model, arbiters run ownership tests and disputes. Every
write that changes the log commits the log leaf and its table row in one transaction
before the client hears "yes", so a crash never loses an acknowledged entry and never
leaves the log and the tables disagreeing.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

from sqlalchemy import select

from cards import cbor, keys
from cards.errors import LaminateError
from verifier.receipts import make_receipt

from . import disputes
from .batching import Integrator
from .config import ServiceConfig, load_or_create_key
from .db import (
    ApiToken,
    CardRow,
    CommitmentRow,
    DisputeRow,
    EndpointRow,
    LogEntry,
    ModelRow,
    now_ms,
    open_database,
    token_digest,
)
from .tlog import TransparencyLog

GENESIS_TYPE = "laminate-log-genesis/1"
LOG_KEY_TYPE = "laminate-log-key/1"
LOG_KEY_REF = "laminate-log-key"
LOG_KEY_FILE = "laminate-log-key.pem"
MODEL_TYPE = "laminate-model-observed/1"
ENDPOINT_TYPE = "laminate-endpoint-observed/1"
MAX_URL = 2048
KEY_FILE = "laminate-service-key.pem"
CARD_CACHE = 1024
WORKER_THREADS = 4
MODEL_CACHE = 100_000
_HEX64 = frozenset("0123456789abcdef")


class NotFound(LaminateError):
    """The thing asked for does not exist (HTTP 404)."""


class Forbidden(LaminateError):
    """A feature this service was not started with (HTTP 403)."""


def is_sha256_hex(value: str) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64



def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Service:
    """State shared by every request of one process: database, log, key, policy."""

    def __init__(self, config: ServiceConfig):
        from verifier.policy import Policy

        self.config = config
        self.policy = Policy.load(config.policy_path) if config.policy_path else Policy.default()
        self.db = open_database(config.database_url)
        key_path = Path(config.key_path) if config.key_path else self._default_key_path()
        self.key = load_or_create_key(key_path)
        self.key_path = key_path
        self.public_key = self.key.public_key()
        self.key_id = keys.key_id(self.public_key)
        log_key_path = Path(config.log_key_path) if config.log_key_path \
            else key_path.with_name(LOG_KEY_FILE)
        self.log_key = load_or_create_key(log_key_path)
        self.log_key_path = log_key_path
        if keys.key_kind(self.log_key) != "ed25519":
            raise LaminateError(f"{log_key_path}: the log key must be Ed25519 (it signs "
                                "checkpoints as signed notes)")
        self.log = TransparencyLog(self.db, self.key, self.log_key)
        self._ensure_genesis()
        self._ensure_log_key()
        self.log.audit()
        self.integrator = Integrator(self.log, config.log_batch_interval, config.log_batch_size)
        self._valid_tokens: set[str] = set()
        self._token_lock = threading.Lock()
        # Registered cards and first sightings of models never change once committed,
        # so they are cached; a miss always goes to the database (another process may
        # have written since).
        self._cards: OrderedDict[str, CardRow] = OrderedDict()
        self._models: dict[str, dict] = {}
        self._cache_lock = threading.Lock()
        for token in config.api_tokens:
            self.add_token(token)

    def _default_key_path(self) -> Path:
        sqlite_path = self.db.sqlite_path()
        base = sqlite_path.parent if sqlite_path else Path.cwd()
        return base / KEY_FILE

    def _ensure_genesis(self) -> None:
        """Leaf 0 names the service key, binding this log to one signer: a process
        started with another key on the same database is refused instead of signing
        tree heads nobody can check against the first ones."""
        with self.db.write() as (session, head):
            if head.size == 0:
                data = cbor.dumps({"type": GENESIS_TYPE, "service_key_id": self.key_id,
                                   "note_key": self.log.note_key, "created_ms": now_ms()})
                self.log.append(session, head, "genesis", self.key_id.hex(), data)
                return
        genesis = self.log.entry(0)
        try:
            owner = cbor.loads(genesis.data).get("service_key_id")
        except (LaminateError, AttributeError):
            owner = None
        if owner != self.key_id:
            raise LaminateError(
                f"{self.key_path}: this database's log was started by service key "
                f"{owner.hex() if isinstance(owner, bytes) else '?'}, not this key "
                f"{self.key_id.hex()}; start every process with the same --key")

    def _ensure_log_key(self) -> None:
        """A leaf names the log key (the genesis leaf of a new log, a leaf of its own in
        a log started before log keys), so tree heads signed by the service key vouch
        for it; a process started with another log key on one database is refused."""
        note_key = self.log.note_key
        genesis = cbor.loads(self.log.entry(0).data)
        logged = genesis.get("note_key")
        if logged is None:
            with self.db.read() as session:
                found = session.execute(select(LogEntry.data)
                                        .where(LogEntry.ref == LOG_KEY_REF)
                                        .order_by(LogEntry.leaf_index).limit(1)).first()
            if found is None:
                with self.db.write() as (session, head):
                    if session.execute(select(LogEntry.leaf_index)
                                       .where(LogEntry.ref == LOG_KEY_REF)).first() is None:
                        self.log.append(session, head, "log-key", LOG_KEY_REF, cbor.dumps(
                            {"type": LOG_KEY_TYPE, "note_key": note_key}))
                        return
                return self._ensure_log_key()
            logged = cbor.loads(bytes(found[0])).get("note_key")
        if logged != note_key:
            raise LaminateError(
                f"{self.log_key_path}: this database's checkpoints are signed by log key "
                f"{logged!r}, not this key {note_key!r}; start every process with the "
                "same --log-key")

    def close(self) -> None:
        self.integrator.close()
        self.db.dispose()

    # tokens --------------------------------------------------------------
    def add_token(self, token: str) -> None:
        digest = token_digest(token)
        with self.db.write() as (session, _head):
            if session.get(ApiToken, digest) is None:
                session.add(ApiToken(token_sha256=digest, created_ms=now_ms()))
        with self._token_lock:
            self._valid_tokens.add(digest)

    def has_tokens(self) -> bool:
        with self.db.read() as session:
            return session.execute(select(ApiToken.token_sha256).limit(1)).first() is not None

    def token_ok(self, token: str) -> bool:
        digest = token_digest(token)
        with self._token_lock:
            if digest in self._valid_tokens:
                return True
        with self.db.read() as session:
            found = session.get(ApiToken, digest) is not None
        if found:
            with self._token_lock:
                self._valid_tokens.add(digest)
        return found

    # lookups -------------------------------------------------------------
    def appraise(self, card_bytes: bytes, *, model_path=None, model_sha256=None):
        from verifier.appraise import appraise
        from verifier.serving_card import appraise_serving_card, is_serving_card
        if is_serving_card(card_bytes):
            if model_path is not None:
                model_sha256 = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
            return appraise_serving_card(card_bytes, policy=self.policy,
                                         model_sha256=model_sha256)[0]
        return appraise(card_bytes, policy=self.policy, model_path=model_path,
                        model_sha256=model_sha256)

    def cached_card(self, card_id: str) -> CardRow | None:
        """The card if this process has it in memory; never touches the database."""
        with self._cache_lock:
            row = self._cards.get(card_id)
            if row is not None:
                self._cards.move_to_end(card_id)
            return row

    def find_card(self, card_id: str) -> CardRow | None:
        if not is_sha256_hex(card_id):
            return None
        row = self.cached_card(card_id)
        if row is not None:
            return row
        with self.db.read() as session:
            row = session.get(CardRow, card_id)
        if row is not None:
            with self._cache_lock:
                self._cards[card_id] = row
                while len(self._cards) > CARD_CACHE:
                    self._cards.popitem(last=False)
        return row

    def card(self, card_id: str) -> CardRow:
        row = self.find_card(card_id)
        if row is None:
            raise NotFound(f"card {card_id}: not registered with this service")
        return row

    def watermark_claim(self, row: CardRow):
        from cards.card import open_card
        from verifier.serving_card import is_serving_card
        if is_serving_card(row.card_bytes):
            return None          # a serving card commits to a DAWN key, not a watermark
        return open_card(row.card_bytes).claims["defenses"]["watermark"]

    def commitment_index(self, commitment: str) -> int | None:
        with self.db.read() as session:
            row = session.get(CommitmentRow, commitment)
            return row.leaf_index if row else None

    def cached_model(self, sha256: str) -> dict | None:
        """The model's first sighting if this process has it in memory; no database."""
        with self._cache_lock:
            record = self._models.get(sha256)
        return dict(record) if record is not None else None

    def model_record(self, sha256: str) -> dict | None:
        record = self.cached_model(sha256)
        if record is not None:
            return record
        with self.db.read() as session:
            row = session.get(ModelRow, sha256)
            if row is None:
                return None
            record = {"sha256": row.sha256, "leaf_index": row.leaf_index, "source": row.source}
        with self._cache_lock:
            if len(self._models) < MODEL_CACHE:
                self._models[sha256] = record
        return dict(record)

    # log views -----------------------------------------------------------
    def _inclusion(self, leaf_index: int, head) -> dict:
        """A leaf's inclusion proof and COSE Receipt in the signed tree ``head``."""
        path = self.log.inclusion_proof(leaf_index, head.tree_size)
        return {"leaf_index": leaf_index,
                "leaf_hash": self.log.leaf_hash(leaf_index).hex(),
                "inclusion_proof": [p.hex() for p in path],
                "receipt": b64(make_receipt(self.key, head.tree_size, leaf_index, path,
                                            head.root_hash))}

    def proof_bundle(self, leaf_index: int) -> dict:
        """Inclusion proof, signed tree head and COSE Receipt of one leaf, in the current
        tree: the service signs only its current head, so an old size can never be
        presented to a client (a freeze) under a fresh signature."""
        head = self.log.tree_head()
        return {**self._inclusion(leaf_index, head), "tree_size": head.tree_size,
                "root_hash": head.root_hash.hex(), "tree_head": head.to_dict()}

    def old_inclusion(self, leaf_index: int, tree_size: int) -> dict:
        """A leaf's inclusion proof in an older tree the caller already holds a signed
        head for, linked to the current signed head by a consistency proof; nothing here
        is signed for the old size."""
        head = self.log.tree_head()
        if tree_size > head.tree_size:
            raise LaminateError(f"tree_size {tree_size} is larger than the log")
        path = self.log.inclusion_proof(leaf_index, tree_size)
        return {"leaf_index": leaf_index,
                "leaf_hash": self.log.leaf_hash(leaf_index).hex(),
                "inclusion_proof": [p.hex() for p in path], "tree_size": tree_size,
                "root_hash": self.log.root(tree_size).hex(),
                "consistency_proof": [p.hex() for p in
                                      self.log.consistency_proof(tree_size, head.tree_size)],
                "tree_head": head.to_dict()}

    def registration(self, row: CardRow) -> dict:
        head = self.log.tree_head()
        body = {"card_id": row.card_id, **self._inclusion(row.leaf_index, head),
                "tree_size": head.tree_size, "root_hash": head.root_hash.hex(),
                "tree_head": head.to_dict()}
        commitment = None
        if row.commitment is not None:
            index = self.commitment_index(row.commitment)
            commitment = {"commitment": row.commitment, **self._inclusion(index, head)}
        body["commitment"] = commitment
        body["model_sha256"] = row.model_sha256
        body["appraisal"] = json.loads(row.appraisal_json)
        return body

    # writes --------------------------------------------------------------
    def register_card(self, card_bytes: bytes) -> tuple[int, dict]:
        """Appraise, then log an accepted card (`registry.registration`)."""
        from .registration import register_card
        return register_card(self, card_bytes)

    def observe_model(self, sha256: str) -> dict:
        """The model's first log index; logs the digest now if never seen before."""
        record = self.model_record(sha256)
        if record is not None:
            return record

        def job(session, leaves):
            row = session.get(ModelRow, sha256)
            if row is None:
                index, _ = leaves.add("model", sha256,
                                      cbor.dumps({"type": MODEL_TYPE, "sha256": sha256}))
                row = ModelRow(sha256=sha256, leaf_index=index, source="submitted")
                session.add(row)
            return {"sha256": row.sha256, "leaf_index": row.leaf_index, "source": row.source}
        return self.integrator.run(job)

    def observe_endpoint(self, url: str) -> dict:
        """A prediction URL's first log index, as a suspect of its own; logs it now if
        never queried before. The URL is never tied to a model digest: an answer over
        HTTP shows what the endpoint answers, not which model file it serves."""
        if not isinstance(url, str) or len(url) > MAX_URL:
            raise LaminateError(f"prediction_url: expected a URL of at most {MAX_URL} characters")
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()

        def job(session, leaves):
            row = session.get(EndpointRow, key)
            if row is None:
                index, _ = leaves.add("endpoint", key,
                                      cbor.dumps({"type": ENDPOINT_TYPE, "url": url}))
                row = EndpointRow(url_sha256=key, url=url, leaf_index=index)
                session.add(row)
            return {"prediction_url": row.url, "leaf_index": row.leaf_index,
                    "source": "endpoint"}
        return self.integrator.run(job)

    def record_dispute(self, verdict: dict) -> DisputeRow:
        dispute_id = secrets.token_hex(16)
        verdict = {**verdict, "dispute_id": dispute_id}
        signed = disputes.sign_verdict(verdict, self.key)

        def job(session, leaves):
            index, _ = leaves.add("verdict", dispute_id, signed)
            row = DisputeRow(dispute_id=dispute_id, leaf_index=index,
                             verdict_json=json.dumps(verdict), signed_verdict=signed)
            session.add(row)
            return row
        return self.integrator.run(job)

    def dispute_view(self, row: DisputeRow) -> dict:
        return {"dispute_id": row.dispute_id, "verdict": json.loads(row.verdict_json),
                "signed_verdict": b64(row.signed_verdict),
                "log": self.proof_bundle(row.leaf_index)}

    def find_dispute(self, dispute_id: str) -> DisputeRow:
        with self.db.read() as session:
            row = session.get(DisputeRow, dispute_id)
        if row is None:
            raise NotFound(f"dispute {dispute_id}: not found")
        return row

