"""The property-card service: registry, transparency log, verification and disputes.

Providers register cards (appraised first; only accepted cards are logged), deployers
fetch and verify them against a model, arbiters run ownership tests and disputes. Every
write that changes the log commits the log leaf and its table row in one transaction
before the client hears "yes", so a crash never loses an acknowledged entry and never
leaves the log and the tables disagreeing.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import select
from starlette.datastructures import UploadFile as StarletteUpload

from cards import cbor, keys
from cards.errors import LaminateError
from verifier.receipts import make_receipt

from . import disputes
from .db import (
    DEFAULT_DATABASE_URL,
    ApiToken,
    CardRow,
    CommitmentRow,
    DisputeRow,
    ModelRow,
    now_ms,
    open_database,
    token_digest,
)
from .tlog import TransparencyLog

GENESIS_TYPE = "laminate-log-genesis/1"
COMMITMENT_TYPE = "laminate-watermark-commitment/1"
MODEL_TYPE = "laminate-model-observed/1"
KEY_FILE = "laminate-service-key.pem"
CARD_CACHE = 1024
WORKER_THREADS = 4
MODEL_CACHE = 100_000
_HEX64 = frozenset("0123456789abcdef")


class NotFound(LaminateError):
    """The thing asked for does not exist (HTTP 404)."""


class Forbidden(LaminateError):
    """A feature this service was not started with (HTTP 403)."""


def _is_sha256_hex(value: str) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64


@dataclass
class ServiceConfig:
    database_url: str = DEFAULT_DATABASE_URL
    policy_path: str | None = None
    api_tokens: list = field(default_factory=list)
    key_path: str | None = None
    max_upload_mb: float = 64.0
    allow_prediction_urls: bool = False

    @classmethod
    def from_env(cls, env=None) -> ServiceConfig:
        env = os.environ if env is None else env
        tokens = [t.strip() for t in env.get("LAMINATE_API_TOKEN", "").split(",") if t.strip()]
        try:
            max_mb = float(env.get("LAMINATE_MAX_UPLOAD_MB", "64"))
        except ValueError:
            raise LaminateError("LAMINATE_MAX_UPLOAD_MB: expected a number of megabytes") from None
        if max_mb <= 0:
            raise LaminateError("LAMINATE_MAX_UPLOAD_MB: must be positive")
        return cls(
            database_url=env.get("LAMINATE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            policy_path=env.get("LAMINATE_POLICY") or None,
            api_tokens=tokens,
            key_path=env.get("LAMINATE_SERVICE_KEY") or None,
            max_upload_mb=max_mb,
            allow_prediction_urls=env.get("LAMINATE_ALLOW_PREDICTION_URLS", "") in ("1", "true", "yes"),
        )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _load_or_create_key(path: Path):
    """Load the service key, or create it once: the file appears atomically (link of a
    finished temp file), so two processes starting together end up with the same key."""
    if path.exists():
        return keys.load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = keys.generate_private_key("ed25519")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    keys.save_private_key(key, tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        key = keys.load_private_key(path)
    finally:
        tmp.unlink(missing_ok=True)
    return key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Service:
    """State shared by every request of one process: database, log, key, policy."""

    def __init__(self, config: ServiceConfig):
        from verifier.policy import Policy

        self.config = config
        self.policy = Policy.load(config.policy_path) if config.policy_path else Policy.default()
        self.db = open_database(config.database_url)
        key_path = Path(config.key_path) if config.key_path else self._default_key_path()
        self.key = _load_or_create_key(key_path)
        self.key_path = key_path
        self.public_key = self.key.public_key()
        self.key_id = keys.key_id(self.public_key)
        self.log = TransparencyLog(self.db, self.key)
        self._ensure_genesis()
        self.log.audit()
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
                                   "created_ms": now_ms()})
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

    def close(self) -> None:
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
        if not _is_sha256_hex(card_id):
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
    def _inclusion(self, leaf_index: int, tree_size: int) -> dict:
        """A leaf's inclusion proof and COSE Receipt in the tree of ``tree_size``."""
        root = self.log.root(tree_size)
        path = self.log.inclusion_proof(leaf_index, tree_size)
        return {"leaf_index": leaf_index,
                "leaf_hash": self.log.leaf_hashes(leaf_index + 1)[leaf_index].hex(),
                "inclusion_proof": [p.hex() for p in path],
                "receipt": _b64(make_receipt(self.key, tree_size, leaf_index, path, root))}

    def proof_bundle(self, leaf_index: int, tree_size: int | None = None) -> dict:
        """Inclusion proof, signed tree head and COSE Receipt of one leaf."""
        if tree_size is None:
            tree_size = self.log.size()
        head = self.log.tree_head(tree_size)
        return {**self._inclusion(leaf_index, tree_size), "tree_size": tree_size,
                "root_hash": head.root_hash.hex(), "tree_head": head.to_dict()}

    def registration(self, row: CardRow, tree_size: int | None = None) -> dict:
        body = {"card_id": row.card_id, **self.proof_bundle(row.leaf_index, tree_size)}
        commitment = None
        if row.commitment is not None:
            index = self.commitment_index(row.commitment)
            commitment = {"commitment": row.commitment,
                          **self._inclusion(index, body["tree_size"])}
        body["commitment"] = commitment
        body["model_sha256"] = row.model_sha256
        body["appraisal"] = json.loads(row.appraisal_json)
        return body

    # writes --------------------------------------------------------------
    def register_card(self, card_bytes: bytes) -> tuple[int, dict]:
        """(201, registration) for a new card, (200, ...) if already registered,
        (422, {"detail", "result"}) if the policy rejects it."""
        from cards.card import open_card

        card_id = hashlib.sha256(card_bytes).hexdigest()
        existing = self.find_card(card_id)
        if existing is not None:
            return 200, {**self.registration(existing), "already_registered": True}
        result = self.appraise(card_bytes)
        if result.status in ("contraindicated", "none"):
            failed = "; ".join(f"{c.check} ({c.field}): {c.reason}" for c in result.failed())
            REGISTRATIONS.labels("rejected").inc()
            return 422, {"detail": f"card rejected by policy {result.policy_id!r}: {failed}",
                         "result": result.to_dict()}
        card = open_card(card_bytes)
        model_sha = card.claims["model"]["sha256"]
        watermark = card.claims["defenses"]["watermark"]
        commitment = watermark["commitment"] if watermark else None
        with self.db.write() as (session, head):
            if session.get(CardRow, card_id) is not None:   # a concurrent twin won
                row = session.get(CardRow, card_id)
                size = None
            else:
                # The commitment goes first: it is what the registration proves was
                # known no later than the model it protects.
                if commitment is not None and session.get(CommitmentRow, commitment) is None:
                    index, _ = self.log.append(
                        session, head, "commitment", commitment,
                        cbor.dumps({"type": COMMITMENT_TYPE, "commitment": commitment,
                                    "card_id": card_id}))
                    session.add(CommitmentRow(commitment=commitment, leaf_index=index))
                index, _ = self.log.append(session, head, "card", card_id, card_bytes)
                row = CardRow(card_id=card_id, card_bytes=card_bytes, leaf_index=index,
                              model_sha256=model_sha, commitment=commitment,
                              appraisal_json=json.dumps(result.to_dict()))
                session.add(row)
                if session.get(ModelRow, model_sha) is None:
                    session.add(ModelRow(sha256=model_sha, leaf_index=index, source="registered"))
                size = head.size
        if size is None:
            return 200, {**self.registration(row), "already_registered": True}
        REGISTRATIONS.labels("accepted").inc()
        return 201, {**self.registration(row, size), "already_registered": False}

    def observe_model(self, sha256: str) -> dict:
        """The model's first log index; logs the digest now if never seen before."""
        record = self.model_record(sha256)
        if record is not None:
            return record
        with self.db.write() as (session, head):
            row = session.get(ModelRow, sha256)
            if row is None:
                index, _ = self.log.append(session, head, "model", sha256,
                                           cbor.dumps({"type": MODEL_TYPE, "sha256": sha256}))
                row = ModelRow(sha256=sha256, leaf_index=index, source="submitted")
                session.add(row)
            return {"sha256": row.sha256, "leaf_index": row.leaf_index, "source": row.source}

    def record_dispute(self, verdict: dict) -> DisputeRow:
        dispute_id = secrets.token_hex(16)
        verdict = {**verdict, "dispute_id": dispute_id}
        signed = disputes.sign_verdict(verdict, self.key)
        with self.db.write() as (session, head):
            index, _ = self.log.append(session, head, "verdict", dispute_id, signed)
            row = DisputeRow(dispute_id=dispute_id, leaf_index=index,
                             verdict_json=json.dumps(verdict), signed_verdict=signed)
            session.add(row)
        return row

    def dispute_view(self, row: DisputeRow) -> dict:
        return {"dispute_id": row.dispute_id, "verdict": json.loads(row.verdict_json),
                "signed_verdict": _b64(row.signed_verdict),
                "log": self.proof_bundle(row.leaf_index)}

    def find_dispute(self, dispute_id: str) -> DisputeRow:
        with self.db.read() as session:
            row = session.get(DisputeRow, dispute_id)
        if row is None:
            raise NotFound(f"dispute {dispute_id}: not found")
        return row


# ---------------------------------------------------------------- metrics

METRICS = CollectorRegistry()
REQUESTS = Counter("laminate_http_requests_total", "HTTP requests by route and status",
                   ["method", "route", "status"], registry=METRICS)
LATENCY = Histogram("laminate_http_request_seconds", "HTTP request latency by route",
                    ["route"], registry=METRICS)
REGISTRATIONS = Counter("laminate_card_registrations_total", "Card registrations by outcome",
                        ["outcome"], registry=METRICS)
LOG_SIZE = Gauge("laminate_log_size", "Leaves in the transparency log as last seen",
                 registry=METRICS)


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Upload limit (413 before or while reading the body) and request metrics; pure
    ASGI so it adds no buffering of its own."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500, "sent": False, "replaced": False}
        limit = self.max_bytes
        seen = 0

        async def reject():
            body = json.dumps({"detail": f"request body larger than the "
                                         f"{limit / 1048576:g} MB upload limit"}).encode()
            status["code"], status["sent"] = 413, True
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                if seen > limit and not status["sent"]:
                    # The app caught the cut-off itself (FastAPI's form parameters turn
                    # it into "400 error parsing the body"): answer 413 instead.
                    status["replaced"] = True
                    await reject()
                    return
                status["code"] = message["status"]
                status["sent"] = True
            elif status["replaced"]:
                return
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            declared = int(length) if length is not None else None
        except ValueError:
            declared = None

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge()
            return message

        try:
            if declared is not None and declared > limit:
                await reject()
            else:
                try:
                    await self.app(scope, limited_receive, send_wrapper)
                except _BodyTooLarge:
                    if status["sent"]:
                        raise
                    await reject()
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope.get("method", ""), path, str(status["code"])).inc()
            LATENCY.labels(path).observe(time.perf_counter() - started)


# ---------------------------------------------------------------- HTTP layer

_bearer = HTTPBearer(auto_error=False, description="API token given to `laminate serve`")


def _save_upload(upload: UploadFile, directory: str) -> tuple[str, str]:
    """Copy an upload to a private temp file; returns (path, sha256 hex)."""
    path = os.path.join(directory, "model.onnx")
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        while True:
            chunk = upload.file.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)
    return path, digest.hexdigest()


VERIFY_FORM = {
    "type": "object", "required": ["card_id"],
    "properties": {
        "card_id": {"type": "string", "description": "SHA-256 hex of the registered card"},
        "model_sha256": {"type": "string", "description": "the model's SHA-256 hex, "
                                                          "instead of uploading it"},
        "model": {"type": "string", "format": "binary", "description": "the model file"},
    },
}


def _form_text(form, name: str, *, required: bool = False) -> str | None:
    value = form.get(name)
    if value is None or value == "":
        if required:
            raise LaminateError(f"{name}: required form field is missing")
        return None
    if not isinstance(value, str):
        raise LaminateError(f"{name}: expected a text field, got a file upload")
    return value


def _wants(request: Request, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("json", "cbor", "html"):
            raise LaminateError(f"format: expected json, cbor or html, got {fmt!r}")
        return fmt
    accept = request.headers.get("accept", "")
    if "application/cbor" in accept:
        return "cbor"
    if "text/html" in accept:
        return "html"
    return "json"


def _card_html(service: Service, row: CardRow) -> str:
    from cards.card import open_card
    from cards.views import to_html

    card = open_card(row.card_bytes)
    page = to_html(card.payload, verification=json.loads(row.appraisal_json))
    size = service.log.size()
    section = (
        '<section id="transparency-log"><h2>Transparency log</h2><ul>'
        f"<li>card id: <code>{html.escape(row.card_id)}</code></li>"
        f"<li>log index: {row.leaf_index} (log size {size})</li>"
        + (f"<li>watermark commitment: <code>{html.escape(row.commitment)}</code> at log index "
           f"{service.commitment_index(row.commitment)}</li>" if row.commitment else "")
        + f"<li>service key id: <code>{service.key_id.hex()}</code></li></ul></section>")
    if "</body>" in page:
        return page.replace("</body>", section + "</body>", 1)
    return page + section


def create_app(config: ServiceConfig | None = None, service: Service | None = None) -> FastAPI:
    service = service or Service(config or ServiceConfig.from_env())
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # Appraisals are CPU-bound under one GIL: a few threads keep the CPU busy,
        # dozens only add switching (32 concurrent clients were 5x slower with 40).
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="laminate property-card service",
        version="1",
        description="Register attested ML property cards in a transparency log, verify "
                    "them against models, run ownership tests and settle disputes.",
    )
    app.state.service = service

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)):
        if credentials is None or credentials.scheme.lower() != "bearer" \
                or not service.token_ok(credentials.credentials):
            raise HTTPException(401, "a valid API token is required: "
                                     "Authorization: Bearer TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(NotFound)
    async def _not_found(_request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Forbidden)
    async def _forbidden(_request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(LaminateError)
    async def _user_error(_request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/healthz", tags=["service"])
    def healthz():
        size = service.log.size()
        LOG_SIZE.set(size)
        return {"status": "ok", "log_size": size}

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    def metrics():
        LOG_SIZE.set(service.log.size())
        return Response(generate_latest(METRICS), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/cards", tags=["cards"], status_code=201, dependencies=[Depends(require_token)],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/cbor": {"schema": {"type": "string", "format": "binary"}}}}},
              responses={200: {"description": "already registered"},
                         422: {"description": "rejected by the policy; the result says why"}})
    async def register_card(request: Request):
        """Appraise a card (the raw card.cbor bytes as the body) and, if the policy
        accepts it, log it and its watermark commitment; returns inclusion proofs, a
        signed tree head and a COSE Receipt."""
        body = await request.body()
        if not body:
            raise LaminateError("body: expected the card.cbor bytes (Content-Type: application/cbor)")
        status, payload = await run_in_threadpool(service.register_card, body)
        return JSONResponse(payload, status_code=status)

    @app.get("/v1/cards/{card_id}", tags=["cards"],
             responses={200: {"content": {"application/cbor": {}, "text/html": {}}}})
    def get_card(card_id: str, request: Request,
                 format: str | None = Query(None, description="json, cbor or html; "
                                                              "default from Accept")):
        """The card as CBOR (the exact registered bytes), JSON or an HTML page."""
        row = service.card(card_id)
        wanted = _wants(request, format)
        if wanted == "cbor":
            return Response(row.card_bytes, media_type="application/cbor")
        if wanted == "html":
            return HTMLResponse(_card_html(service, row))
        from cards.card import open_card
        from verifier.cli_verify import jsonable
        card = open_card(row.card_bytes)
        return {"card_id": row.card_id, "leaf_index": row.leaf_index,
                "commitment": row.commitment,
                "commitment_leaf_index": service.commitment_index(row.commitment)
                if row.commitment else None,
                "model_sha256": row.model_sha256, "simulated": card.simulated,
                "appraisal": json.loads(row.appraisal_json),
                "payload": jsonable(card.payload)}

    @app.post("/v1/verify", tags=["cards"], dependencies=[Depends(require_token)],
              openapi_extra={"requestBody": {"required": True, "content": {
                  media: {"schema": VERIFY_FORM} for media in (
                      "application/x-www-form-urlencoded", "multipart/form-data")}}})
    async def verify(request: Request):
        """Appraise a registered card against an uploaded model file or a model digest."""
        # The form is read by hand: FastAPI's Form/File parameters cost more per request
        # than the rest of the HTTP stack together (type introspection on every call).
        async with request.form() as form:
            card_id = _form_text(form, "card_id", required=True)
            model_sha256 = _form_text(form, "model_sha256")
            model = form.get("model")
            if model is not None and not isinstance(model, StarletteUpload):
                raise LaminateError("model: expected a file upload (multipart/form-data)")
            if model is None and service.cached_card(card_id) is not None \
                    and model_sha256 is not None and service.cached_model(model_sha256) is not None:
                # Nothing to wait for: a ~1 ms appraisal is cheaper run right here than
                # handed to a worker thread and back (two GIL handoffs per request).
                return JSONResponse(_verify(card_id, model_sha256, None))
            return JSONResponse(await run_in_threadpool(_verify, card_id, model_sha256, model))

    def _verify(card_id, model_sha256, model):
        row = service.card(card_id)
        if model is not None:
            with tempfile.TemporaryDirectory(prefix="laminate-verify-") as tmp:
                path, digest = _save_upload(model, tmp)
                if model_sha256 and model_sha256 != digest:
                    raise LaminateError("model_sha256: does not match the uploaded file")
                result = service.appraise(row.card_bytes, model_path=path)
        elif model_sha256:
            if not _is_sha256_hex(model_sha256):
                raise LaminateError("model_sha256: expected 64 lowercase hex digits")
            digest = model_sha256
            result = service.appraise(row.card_bytes, model_sha256=digest)
        else:
            raise LaminateError("model: upload the model file or give model_sha256")
        seen = service.observe_model(digest)
        return {"card_id": card_id, "model_sha256": digest, "model_first_seen": seen,
                "result": result.to_dict()}

    def _suspect(model: UploadFile | None, prediction_url: str | None, tmp: str):
        from verifier.suspect import HttpSuspect, OnnxSuspect

        if model is not None:
            path, digest = _save_upload(model, tmp)
            return OnnxSuspect(path), digest
        if prediction_url:
            if not service.config.allow_prediction_urls:
                raise Forbidden("prediction_url: this service does not query prediction URLs "
                                "(start it with --allow-prediction-urls); upload the ONNX model")
            return HttpSuspect(prediction_url), None
        raise LaminateError("suspect: upload the ONNX model or give prediction_url")

    @app.post("/v1/ownership", tags=["ownership"], dependencies=[Depends(require_token)])
    def ownership(card_id: str = Form(...), opening: str = Form(..., description="opening JSON"),
                  model: UploadFile | None = File(None), prediction_url: str | None = Form(None)):
        """Run the ownership test of a registered card's watermark against a suspect."""
        from verifier.ownership import ownership_test

        row = service.card(card_id)
        result = service.appraise(row.card_bytes)
        watermark = service.watermark_claim(row)
        if watermark is None:
            raise LaminateError(f"card {card_id}: carries no watermark commitment to test")
        parsed = disputes.parse_opening(opening)
        with tempfile.TemporaryDirectory(prefix="laminate-ownership-") as tmp:
            suspect, digest = _suspect(model, prediction_url, tmp)
            seen = service.observe_model(digest) if digest else None
            test = ownership_test(parsed, watermark, suspect, alpha=service.policy.ownership.alpha)
        return {"card_id": card_id, "card_status": result.status,
                "suspect": {"sha256": digest, "first_seen": seen, "prediction_url": prediction_url},
                "ownership": test.to_dict()}

    @app.post("/v1/disputes", tags=["disputes"], status_code=201,
              dependencies=[Depends(require_token)])
    def open_dispute(claims: str = Form(..., description='JSON list of {"card_id", "opening"}'),
                     model: UploadFile | None = File(None),
                     model_sha256: str | None = Form(None),
                     prediction_url: str | None = Form(None)):
        """Judge ownership claims against a suspect model; returns the signed verdict."""
        parsed = disputes.parse_claims(claims)
        if model is None and not (model_sha256 and prediction_url):
            raise LaminateError("suspect: upload the ONNX model, or give model_sha256 together "
                                "with prediction_url")
        if model_sha256 is not None and not _is_sha256_hex(model_sha256):
            raise LaminateError("model_sha256: expected 64 lowercase hex digits")
        with tempfile.TemporaryDirectory(prefix="laminate-dispute-") as tmp:
            suspect, digest = _suspect(model, prediction_url if model is None else None, tmp)
            if digest and model_sha256 and digest != model_sha256:
                raise LaminateError("model_sha256: does not match the uploaded file")
            digest = digest or model_sha256
            record = service.observe_model(digest)      # committed before any claim is judged
            verdict = disputes.resolve(service, record, suspect, parsed)
        row = service.record_dispute(verdict)
        return service.dispute_view(row)

    @app.get("/v1/disputes/{dispute_id}", tags=["disputes"])
    def get_dispute(dispute_id: str):
        """A dispute's signed verdict and the proof that it is in the log."""
        return service.dispute_view(service.find_dispute(dispute_id))

    @app.get("/v1/log/tree-head", tags=["log"])
    def tree_head():
        """The current signed tree head (COSE_Sign1 by the service key, base64)."""
        return service.log.tree_head().to_dict()

    @app.get("/v1/log/key", tags=["log"])
    def service_key():
        """The service's public key, to check tree heads, receipts and verdicts offline."""
        return {"key_id": service.key_id.hex(),
                "public_key_pem": keys.public_pem(service.public_key).decode("ascii")}

    @app.get("/v1/log/inclusion", tags=["log"])
    def inclusion(leaf_index: int = Query(..., ge=0), tree_size: int | None = Query(None, ge=1)):
        """Inclusion proof (RFC 9162 order, hex), tree head and COSE Receipt of a leaf."""
        size = service.log.size() if tree_size is None else tree_size
        if tree_size is not None and tree_size > service.log.size():
            raise LaminateError(f"tree_size {tree_size} is larger than the log")
        if leaf_index >= size:
            raise LaminateError(f"leaf_index {leaf_index} is not in a tree of size {size}")
        return service.proof_bundle(leaf_index, size)

    @app.get("/v1/log/consistency", tags=["log"])
    def consistency(first: int = Query(..., ge=1), second: int | None = Query(None, ge=1)):
        """Consistency proof between two tree sizes, with the signed head of the second."""
        current = service.log.size()
        second = current if second is None else second
        if second > current:
            raise LaminateError(f"second {second} is larger than the log ({current} leaves)")
        if first > second:
            raise LaminateError(f"first {first} is larger than second {second}")
        proof = service.log.consistency_proof(first, second)
        return {"first": first, "second": second,
                "first_root": service.log.root(first).hex(),
                "consistency_proof": [p.hex() for p in proof],
                "tree_head": service.log.tree_head(second).to_dict()}

    @app.get("/v1/log/entries/{leaf_index}", tags=["log"])
    def log_entry(leaf_index: int):
        """One leaf's stored data, so anyone can recompute its leaf hash."""
        # Checked against the log size first: an index beyond 64 bits never reaches the
        # database driver (which would fail with a 500).
        entry = service.log.entry(leaf_index) if 0 <= leaf_index < service.log.size() else None
        if entry is None:
            raise NotFound(f"log entry {leaf_index}: not in the log")
        return {"leaf_index": entry.leaf_index, "kind": entry.kind, "ref": entry.ref,
                "leaf_hash": bytes(entry.leaf_hash).hex(), "data": _b64(bytes(entry.data))}

    app.add_middleware(GuardMiddleware, max_bytes=service.config.max_upload_bytes)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory: configuration comes from LAMINATE_* environment variables."""
    return create_app(ServiceConfig.from_env())
