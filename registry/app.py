"""The HTTP routes of the property-card service (FastAPI).

Each route reads its input, hands the work to ``Service`` (state and rules) and shapes
the answer; CPU-bound work runs in the worker threads.
"""
from __future__ import annotations

import contextlib
import json
import tempfile

import anyio
from fastapi import (
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile as StarletteUpload

from cards import keys
from cards.errors import LaminateError
from verifier import tiles

from . import disputes
from .config import ServiceConfig
from .metrics import LOG_SIZE, METRICS
from .middleware import GuardMiddleware
from .service import WORKER_THREADS, Forbidden, NotFound, Service, b64, is_sha256_hex
from .uploads import VERIFY_FORM, form_text, save_upload
from .views import card_html, wants

_bearer = HTTPBearer(auto_error=False, description="API token given to `laminate serve`")

def create_app(config: ServiceConfig | None = None, service: Service | None = None) -> FastAPI:
    owned = service is None
    service = service or Service(config or ServiceConfig.from_env())

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # Appraisals are CPU-bound under one GIL: a few threads keep the CPU busy,
        # dozens only add switching (32 concurrent clients were 5x slower with 40).
        anyio.to_thread.current_default_thread_limiter().total_tokens = WORKER_THREADS
        yield
        if owned:           # commit the batch in flight, stop the integrator, free the pool
            service.close()

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
    async def healthz():
        # Answered on the event loop, not in a worker thread: it must keep answering
        # while every worker is busy with a slow suspect.
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

    @app.post("/v1/serving-heads", tags=["cards"], status_code=201,
              dependencies=[Depends(require_token)],
              responses={200: {"description": "already logged"}})
    async def register_serving_head(request: Request):
        """Log a prediction server's signed query-log head (`GET /v1/log/head` of
        `laminate serve-model`), checked against its registered serving card: a DAWN
        claim replays only answers under a head logged before the suspect."""
        from .serving import register_head
        body = await request.body()
        if not body:
            raise LaminateError("body: expected the signed log head (COSE_Sign1 bytes)")
        status, payload = await run_in_threadpool(register_head, service, body)
        return JSONResponse(payload, status_code=status)

    @app.get("/v1/cards/{card_id}", tags=["cards"],
             responses={200: {"content": {"application/cbor": {}, "text/html": {}}}})
    def get_card(card_id: str, request: Request,
                 format: str | None = Query(None, description="json, cbor or html; "
                                                              "default from Accept")):
        """The card as CBOR (the exact registered bytes), JSON or an HTML page."""
        row = service.card(card_id)
        wanted = wants(request, format)
        if wanted == "cbor":
            return Response(row.card_bytes, media_type="application/cbor")
        if wanted == "html":
            return HTMLResponse(card_html(service, row))
        from cards.card import open_card
        from verifier.cli_verify import jsonable
        from verifier.serving_card import is_serving_card, open_serving_card
        if is_serving_card(row.card_bytes):
            serving = open_serving_card(row.card_bytes)
            return {"card_id": row.card_id, "leaf_index": row.leaf_index, "serving_card": True,
                    "model_sha256": row.model_sha256, "simulated": serving.simulated,
                    "appraisal": json.loads(row.appraisal_json),
                    "payload": jsonable({"statement": serving.statement,
                                         "evidence": serving.evidence})}
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
            card_id = form_text(form, "card_id", required=True)
            model_sha256 = form_text(form, "model_sha256")
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
                path, digest = save_upload(model, tmp)
                if model_sha256 and model_sha256 != digest:
                    raise LaminateError("model_sha256: does not match the uploaded file")
                result = service.appraise(row.card_bytes, model_path=path)
        elif model_sha256:
            if not is_sha256_hex(model_sha256):
                raise LaminateError("model_sha256: expected 64 lowercase hex digits")
            digest = model_sha256
            result = service.appraise(row.card_bytes, model_sha256=digest)
            # A digest is no evidence of holding the model: it is looked up, never
            # logged, so nobody can place a first sighting before the owner's.
            return {"card_id": card_id, "model_sha256": digest,
                    "model_first_seen": service.model_record(digest),
                    "result": result.to_dict()}
        else:
            raise LaminateError("model: upload the model file or give model_sha256")
        seen = service.observe_model(digest)
        return {"card_id": card_id, "model_sha256": digest, "model_first_seen": seen,
                "result": result.to_dict()}

    def _suspect(model: UploadFile | None, prediction_url: str | None, tmp: str):
        from verifier.suspect import HttpSuspect, OnnxSuspect

        if model is not None:
            path, digest = save_upload(model, tmp)
            return OnnxSuspect(path, time_limit_s=service.config.suspect_seconds,
                               memory_mb=service.config.suspect_memory_mb), digest
        if prediction_url:
            if not service.config.allow_prediction_urls:
                raise Forbidden("prediction_url: this service does not query prediction URLs "
                                "(start it with --allow-prediction-urls); upload the ONNX model")
            return HttpSuspect(prediction_url, timeout=service.config.suspect_seconds,
                               total_s=service.config.suspect_seconds), None
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
            try:
                seen = service.observe_model(digest) if digest else None
                test = ownership_test(parsed, watermark, suspect,
                                      alpha=service.policy.ownership.alpha)
            finally:
                _close(suspect)
        return {"card_id": card_id, "card_status": result.status,
                "suspect": {"sha256": digest, "first_seen": seen, "prediction_url": prediction_url},
                "ownership": test.to_dict()}

    @app.post("/v1/disputes", tags=["disputes"], status_code=201,
              dependencies=[Depends(require_token)])
    def open_dispute(claims: str | None = Form(None, description='JSON list of {"card_id", "opening"}'),
                     model: UploadFile | None = File(None),
                     model_sha256: str | None = Form(None),
                     prediction_url: str | None = Form(None),
                     dawn_claim: str | None = Form(None, description='{"serving_card_id", '
                                                   '"opening"}: a DAWN claim'),
                     dawn_evidence: UploadFile | None = File(None, description="the clients' "
                                                             "answers under an anchored head"),
                     served_model: UploadFile | None = File(None, description="the model the "
                                                            "serving card serves")):
        """Judge ownership claims against a suspect model; returns the signed verdict.

        Claims argue from a card's watermark (``claims``) or from a prediction server's
        DAWN flips (``dawn_claim`` with ``dawn_evidence`` and ``served_model``). The
        suspect is an uploaded model file (identified by its digest) or a prediction
        URL (identified by the URL itself: the service cannot tell which model an
        endpoint serves, so a URL is never judged as a logged model digest)."""
        if not claims and not dawn_claim:
            raise LaminateError("claims: give watermark claims, a dawn_claim, or both")
        parsed = disputes.parse_claims(claims) if claims else []
        dawn_parts = None
        if dawn_claim:
            from .serving import parse_dawn_claim
            dawn_parts = parse_dawn_claim(dawn_claim)
            if dawn_evidence is None or served_model is None:
                raise LaminateError("dawn_evidence, served_model: a DAWN claim needs the "
                                    "evidence file and the served model")
        if (model is None) == (not prediction_url):
            raise LaminateError("suspect: upload the ONNX model or give prediction_url, "
                                "not both")
        if prediction_url and model_sha256:
            raise LaminateError("model_sha256: a prediction URL proves nothing about which "
                                "model file it serves; a dispute over a URL names the URL "
                                "only (or upload the model file)")
        if model_sha256 is not None and not is_sha256_hex(model_sha256):
            raise LaminateError("model_sha256: expected 64 lowercase hex digits")
        with tempfile.TemporaryDirectory(prefix="laminate-dispute-") as tmp:
            suspect, digest = _suspect(model, prediction_url, tmp)
            try:
                if digest and model_sha256 and digest != model_sha256:
                    raise LaminateError("model_sha256: does not match the uploaded file")
                # committed before any claim is judged
                record = (service.observe_model(digest) if digest
                          else service.observe_endpoint(prediction_url))
                dawn_claims = []
                if dawn_parts is not None:
                    dawn_claims.append(_dawn_claim(dawn_parts, dawn_evidence, served_model, tmp))
                verdict = disputes.resolve(service, record, suspect, parsed, dawn_claims)
            finally:
                _close(suspect)
                for claim in dawn_claims:
                    _close(claim.victim)
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
                "public_key_pem": keys.public_pem(service.public_key).decode("ascii"),
                "log_note_key": service.log.note_key}

    @app.get("/v1/log/note-key", tags=["log"], response_class=PlainTextResponse)
    def note_key():
        """The log key's note verifier key, to pin when checking checkpoints."""
        return PlainTextResponse(service.log.note_key + "\n")

    @app.get("/v1/log/inclusion", tags=["log"])
    def inclusion(leaf_index: int = Query(..., ge=0), tree_size: int | None = Query(None, ge=1)):
        """Inclusion proof (RFC 9162 order, hex), signed tree head and COSE Receipt of a
        leaf in the current tree. With an older ``tree_size``: the proof in that tree and
        a consistency proof from it to the current signed head (no receipt: only the
        current head is ever signed)."""
        size = service.log.size()
        if tree_size is not None and tree_size > size:
            raise LaminateError(f"tree_size {tree_size} is larger than the log")
        wanted = size if tree_size is None else tree_size
        if leaf_index >= wanted:
            raise LaminateError(f"leaf_index {leaf_index} is not in a tree of size {wanted}")
        if tree_size is None or tree_size == size:
            return service.proof_bundle(leaf_index)
        return service.old_inclusion(leaf_index, tree_size)

    @app.get("/v1/log/consistency", tags=["log"])
    def consistency(first: int = Query(..., ge=1), second: int | None = Query(None, ge=1)):
        """Consistency proof between two tree sizes, with the current signed tree head
        (the head of ``second`` only when ``second`` is the current size)."""
        head = service.log.tree_head()
        second = head.tree_size if second is None else second
        if second > head.tree_size:
            raise LaminateError(f"second {second} is larger than the log "
                                f"({head.tree_size} leaves)")
        if first > second:
            raise LaminateError(f"first {first} is larger than second {second}")
        proof = service.log.consistency_proof(first, second)
        return {"first": first, "second": second,
                "first_root": service.log.root(first).hex(),
                "second_root": service.log.root(second).hex(),
                "consistency_proof": [p.hex() for p in proof],
                "tree_head": head.to_dict()}

    @app.get("/checkpoint", tags=["log"], response_class=PlainTextResponse)
    def checkpoint():
        """The current tree as a signed-note checkpoint (tlog-tiles clients, witnesses)."""
        return PlainTextResponse(service.log.checkpoint())

    @app.get("/tile/{path:path}", tags=["log"])
    def tile(path: str):
        """Hash tiles and entry bundles at the tlog-tiles paths, read-only."""
        try:
            level, index, width = tiles.parse_tile_path(f"tile/{path}")
            if level == "entries":
                body = service.log.entry_bundle(index, width)
            else:
                if tiles.tile_width(int(level), index, service.log.size()) < width:
                    raise tiles.TileError(f"tile/{path}: beyond the current tree")
                body = service.log.read_tile(int(level), index, width)
        except (tiles.TileError, LaminateError) as exc:
            raise NotFound(str(exc)) from None
        # A full tile, or a partial tile of a given width, never changes.
        return Response(body, media_type="application/octet-stream",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})

    @app.get("/v1/log/entries/{leaf_index}", tags=["log"])
    def log_entry(leaf_index: int):
        """One leaf's stored data, so anyone can recompute its leaf hash."""
        # Checked against the log size first: an index beyond 64 bits never reaches the
        # database driver (which would fail with a 500).
        entry = service.log.entry(leaf_index) if 0 <= leaf_index < service.log.size() else None
        if entry is None:
            raise NotFound(f"log entry {leaf_index}: not in the log")
        return {"leaf_index": entry.leaf_index, "kind": entry.kind, "ref": entry.ref,
                "leaf_hash": bytes(entry.leaf_hash).hex(), "data": b64(bytes(entry.data))}

    def _dawn_claim(parts, evidence: UploadFile, served: UploadFile, tmp: str):
        import os

        from verifier.suspect import OnnxSuspect

        from .serving import DawnClaimInput
        os.makedirs(os.path.join(tmp, "evidence"))
        os.makedirs(os.path.join(tmp, "served"))
        evidence_path, _ = save_upload(evidence, os.path.join(tmp, "evidence"))
        served_path, served_sha = save_upload(served, os.path.join(tmp, "served"))
        with open(evidence_path, "rb") as f:
            data = f.read()
        victim = OnnxSuspect(served_path, time_limit_s=service.config.suspect_seconds,
                             memory_mb=service.config.suspect_memory_mb)
        return DawnClaimInput(parts[0], parts[1], data, victim, served_sha)

    app.add_middleware(GuardMiddleware, max_bytes=service.config.max_upload_bytes)
    return app


def _close(suspect) -> None:
    """Stop a suspect's evaluation process now rather than when it is collected."""
    close = getattr(suspect, "close", None)
    if close is not None:
        close()


def app_from_env() -> FastAPI:
    """uvicorn factory: configuration comes from LAMINATE_* environment variables."""
    return create_app(ServiceConfig.from_env())
