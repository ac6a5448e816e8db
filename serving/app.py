"""The prediction server: labels (and probabilities where the serving card says so), a
DAWN flip on a keyed fraction of inputs, a signed receipt per batch, every answer logged.

Each request is one batch: the model runs once, every row gets its canonical bytes and
digest, DAWN decides per row, the batch's leaves go into the deployment log and one
signature covers their Merkle root. ``plain=True`` serves the same model through the same
app with none of that (the benchmark's baseline).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
from pathlib import Path

import anyio
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cards import merkle
from cards.errors import LaminateError
from serving.deploy import Deployment
from serving.log import LogUnavailable, QueryLog
from verifier import dawn, receipts_inference

MAX_BATCH = 256
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_bearer = HTTPBearer(auto_error=False)


def load_tokens(path) -> dict[bytes, str]:
    """{sha256(token): client id} from lines "CLIENT_ID TOKEN" (only digests are kept)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()[:10_000]
    except (OSError, UnicodeDecodeError) as exc:
        raise LaminateError(f"{path}: cannot read the token file ({exc})") from None
    tokens = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not _CLIENT_ID.fullmatch(parts[0]) or len(parts[1]) < 16:
            raise LaminateError(f"{path}: line {number}: expected CLIENT_ID TOKEN "
                                "(id of [A-Za-z0-9_.-], token of 16+ characters)")
        tokens[hashlib.sha256(parts[1].encode()).digest()] = parts[0]
    if not tokens:
        raise LaminateError(f"{path}: no clients: add lines CLIENT_ID TOKEN")
    return tokens


class Model:
    """onnxruntime on CPU; labels are the argmax of the first output."""

    def __init__(self, path: Path, input_shape: list, threads: int = 1):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.shape = tuple(input_shape)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input: x})[0], dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class Server:
    """One deployment's answering logic, independent of HTTP (tests and benches call it)."""

    def __init__(self, deployment: Deployment, log: QueryLog | None, *, plain: bool = False):
        self.d = deployment
        self.log = log
        self.plain = plain
        self.model = Model(deployment.model_path, deployment.input_shape)
        self.key = deployment.opening.key if deployment.opening else None
        self.signer = receipts_inference.ReceiptSigner(deployment.receipt_key)

    def parse(self, body: bytes) -> np.ndarray:
        """The request's inputs as float32 [batch, *shape]; LaminateError names the field."""
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise LaminateError("body: not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
            raise LaminateError('inputs: expected {"inputs": [row, ...]}')
        rows = doc["inputs"]
        if not 1 <= len(rows) <= MAX_BATCH:
            raise LaminateError(f"inputs: expected 1 to {MAX_BATCH} rows, got {len(rows)}")
        try:
            x = np.asarray(rows, dtype=np.float32)
        except (ValueError, TypeError, OverflowError):
            raise LaminateError("inputs: every row must be numbers of the model's input shape") from None
        if x.shape[1:] != self.model.shape:
            size = math.prod(self.model.shape)
            if x.ndim != 2 or x.shape[1] != size:
                raise LaminateError(f"inputs: expected rows of shape {list(self.model.shape)} "
                                    f"(or {size} numbers), got {list(x.shape[1:])}")
            x = x.reshape((len(x), *self.model.shape))
        if not np.isfinite(x).all():
            raise LaminateError("inputs: NaN and infinities are not inputs")
        return x

    def answer(self, client: str, x: np.ndarray) -> dict:
        logits = self.model.logits(x)
        labels = logits.argmax(axis=1)
        probabilities = softmax(logits) if self.d.probabilities else None
        if self.plain:
            out = {"labels": labels.tolist()}
            if probabilities is not None:
                out["probabilities"] = probabilities.tolist()
            return out
        canonical = dawn.canonical_inputs(x)
        sha256 = hashlib.sha256
        digests = [sha256(c).digest() for c in canonical]
        decided = dawn.answers(self.key, self.d.rate, canonical, labels.tolist(), self.d.classes)
        served = [(label, None) for label, _ in decided]
        if probabilities is not None:
            for i, (label, flipped) in enumerate(decided):
                probs = probabilities[i]
                if flipped:  # the wrong label takes the top probability: swap the two
                    probs = probs.copy()
                    probs[[label, labels[i]]] = probs[[labels[i], label]]
                served[i] = (label, probs.tolist())
        leaves = [receipts_inference.leaf(d, label, probs)
                  for d, (label, probs) in zip(digests, served)]
        hashes = [merkle.leaf_hash(item) for item in leaves]

        def record(first: int) -> bytes:   # the log assigns the index, the receipt names it
            return receipts_inference.receipt_payload(
                serving_card=self.d.card.digest, model_sha256=self.d.model_sha256,
                client=client, first_index=first, leaf_hashes=hashes)

        first, payload = self.log.append(client, canonical, leaves, record)
        receipt = self.signer.sign(payload)
        out = {"labels": [label for label, _ in served]}
        if probabilities is not None:
            out["probabilities"] = [probs for _, probs in served]
        out.update({"input_sha256": [d.hex() for d in digests], "first_index": first,
                    "receipt": base64.b64encode(receipt).decode()})
        return out


def create_app(server: Server, tokens: dict[bytes, str]) -> FastAPI:
    app = FastAPI(title="laminate prediction server", version="1",
                  description="Answers for the model its serving card measures; every answer "
                              "is logged and covered by a signed receipt.")
    max_body = MAX_BATCH * math.prod(server.model.shape) * 32 + 4096

    def client_of(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
        if credentials is not None and credentials.scheme.lower() == "bearer":
            digest = hashlib.sha256(credentials.credentials.encode()).digest()
            for known, client in tokens.items():
                if hmac.compare_digest(known, digest):
                    return client
        raise HTTPException(401, "a valid client token is required: Authorization: Bearer TOKEN",
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(LaminateError)
    async def _user_error(_request, exc):
        status = 503 if isinstance(exc, LogUnavailable) else 422
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model_sha256": server.d.model_sha256}

    @app.get("/v1/serving-card")
    def get_serving_card():
        return Response(server.d.card_bytes, media_type="application/cose")

    @app.post("/v1/predict")
    async def predict(request: Request, client: str = Depends(client_of)):
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body):
            raise HTTPException(413, f"request body larger than {max_body} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                raise HTTPException(413, f"request body larger than {max_body} bytes")
        x = server.parse(bytes(body))
        out = await anyio.to_thread.run_sync(server.answer, client, x)
        return Response(json.dumps(out, separators=(",", ":")), media_type="application/json")

    @app.get("/v1/log/head")
    def log_head(_client: str = Depends(client_of)):
        """The log's current head, signed by the receipt key: a statement any client may
        register with the card service (POST /v1/serving-heads) to anchor its answers."""
        if server.log is None:
            raise HTTPException(404, "this server keeps no log")
        from serving.anchor import signed_head

        return Response(signed_head(server), media_type="application/cose")

    @app.get("/v1/clients/{client_id}/log")
    def client_log(client_id: str, start: int = 0, limit: int = 100,
                   client: str = Depends(client_of)):
        if server.log is None:
            raise HTTPException(404, "this server keeps no log")
        if not hmac.compare_digest(client_id.encode(), client.encode()):
            raise HTTPException(403, "a client reads only its own log")
        size, root = server.log.tree_head()
        return {"client": client, "tree_size": size, "root": root.hex(),
                "entries": server.log.entries(client, start, limit)}

    return app
