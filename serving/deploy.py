"""Starting a deployment: check the model against its card, draw the keys, seal the serving card.

The DAWN key, its salt, the receipt signing key and the deployment id all come from the
attestation module's randomness, and the statement committing to them is measured and
quoted before the first query is answered: the owner cannot later pick a key that makes
an independent model look like a copy, and a client can check every receipt against a
key the hardware saw drawn.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from attest import measure
from attest.backend import open_backend
from cards import card as cardlib
from cards import keys
from cards.errors import CardFormatError, LaminateError
from cards.files import write_atomic
from verifier import dawn, serving_card


@dataclass
class Deployment:
    """Everything a running server needs; the secrets stay in this process and the state
    directory (0600), never in an answer."""
    model_path: Path
    model_sha256: str
    classes: int
    input_shape: list
    probabilities: bool
    opening: dawn.Opening | None
    rate: float
    receipt_key: ed25519.Ed25519PrivateKey
    card_bytes: bytes          # the serving card
    card: serving_card.ServingCard


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_signature(model_path: Path) -> tuple[list, int]:
    """(input shape without the batch axis, classes) read from the ONNX graph."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types
        raise LaminateError(f"{model_path}: not a loadable ONNX model "
                            f"({str(exc).strip().splitlines()[0][:200]})") from None
    shape = session.get_inputs()[0].shape[1:]
    out = session.get_outputs()[0].shape
    if not shape or any(type(d) is not int for d in shape) or type(out[-1]) is not int:
        raise LaminateError(f"{model_path}: input and output shapes must be fixed past the batch axis")
    return list(shape), int(out[-1])


def check_model(card_path: Path, model_path: Path) -> tuple[bytes, str]:
    """The model card's bytes and the model digest, once the file is the card's model."""
    try:
        card_bytes = Path(card_path).read_bytes()
    except OSError as exc:
        raise LaminateError(f"{card_path}: cannot read the card ({exc.strerror})") from None
    try:
        card = cardlib.open_card(card_bytes)
    except CardFormatError as exc:
        raise LaminateError(f"{card_path}: {exc.field}: {exc.reason}") from None
    if not Path(model_path).is_file():
        raise LaminateError(f"{model_path}: model file not found")
    digest = file_sha256(Path(model_path))
    measured = card.claims["model"]["sha256"]
    if digest != measured:
        raise LaminateError(f"{model_path}: sha256 {digest[:16]}... is not the model "
                            f"{card_path} measures (claims.model.sha256 {measured[:16]}...); "
                            "refusing to serve it")
    return card_bytes, digest


def start(card_path, model_path, release_key, *, rate: float = 0.0, probabilities=False,
          backend: str = "sim", sim_dir=None, tcti=None, state_dir=None) -> Deployment:
    """Check, draw, measure, quote and seal; writes the serving card (and the DAWN
    opening, secret) into ``state_dir`` when given."""
    rate = dawn.check_rate(rate)
    card_bytes, digest = check_model(Path(card_path), Path(model_path))
    shape, classes = model_signature(Path(model_path))
    if rate and classes < 3:
        raise LaminateError(f"{model_path}: DAWN needs at least 3 classes, the model has {classes}")
    module = open_backend(backend, sim_dir=sim_dir, tcti=tcti)
    try:
        module.start([serving_card.CODE_REGISTER, serving_card.DATA_REGISTER])
        code = measure.code_claim(None)
        events = [_event("code", code, serving_card.CODE_REGISTER)]
        module.extend(events[0])
        receipt_key = ed25519.Ed25519PrivateKey.from_private_bytes(module.random(32))
        opening = dawn.Opening(module.random(dawn.KEY_BYTES), module.random(dawn.SALT_BYTES)) \
            if rate else None
        statement = {
            "type": serving_card.STATEMENT_TYPE, "deployment": module.random(32).hex(),
            "model_sha256": digest, "card_sha256": cardlib.card_digest(card_bytes),
            "classes": classes, "input_shape": shape,
            "answers": "probabilities" if probabilities else "labels",
            "dawn": None if not rate else {"scheme": dawn.SCHEME, "rate": rate,
                                           "key_commitment": opening.commitment},
            "receipt_key": keys.spki_der(receipt_key)}
        events.append(_event(serving_card.STATEMENT_TYPE, statement, serving_card.DATA_REGISTER))
        module.extend(events[1])
        evidence = module.quote(serving_card.statement_digest(statement))
        evidence["event_log"] = events
    finally:
        module.close()
    sealed = serving_card.seal(statement, evidence, release_key)
    deployment = Deployment(Path(model_path), digest, classes, shape, probabilities, opening,
                            rate, receipt_key, sealed, serving_card.open_serving_card(sealed))
    if state_dir is not None:
        write_atomic(Path(state_dir) / "serving-card.cbor", sealed)
        if opening is not None:
            opening.save(Path(state_dir) / "dawn.opening.json")
    return deployment


def _event(kind: str, data, register: int) -> dict:
    from cards import schema

    return {"register": register, "type": kind, "digest": schema.event_digest(kind, data),
            "data": data}
