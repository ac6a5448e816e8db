"""The serving card: a signed, measured statement of what a prediction server answers with.

A serving card is a COSE_Sign1 by the release key (the key that signs model cards) over
{format, statement, evidence}. The statement names the model digest (and the model
card's), the answer kind, the DAWN key commitment and rate, and the public key that signs
inference receipts. The evidence is the attestation module's quote over H(dcbor(statement))
with an event log of two events: the serving code's identity, then the statement. So a
deployer trusts a serving card for the same reasons as a model card (trusted release key,
trusted root, pinned code), and the DAWN key and receipt key were drawn inside the measured
server, not chosen afterwards. Layout: cards/FORMAT.md, "Serving".
"""
from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from cards import cbor, cose, keys
from cards.errors import CardFormatError, LaminateError
from verifier import dawn
from verifier.appraise import check_backend, check_log_replay, check_release_signature
from verifier.evidence import check_evidence
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED, WARNING, Check, Result

FORMAT = "laminate-serving-card/1"
STATEMENT_TYPE = "serving"
CODE_REGISTER, DATA_REGISTER = 16, 23
ANSWERS = ("labels", "probabilities")
MAX_SERVING_CARD_BYTES = 1 << 20
MAX_CLASSES = 100_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
_STATEMENT_FIELDS = {"type", "deployment", "model_sha256", "card_sha256", "classes",
                     "input_shape", "answers", "dawn", "receipt_key"}
_EVIDENCE_FIELDS = {"backend", "quote", "signature", "cert_chain", "extra", "event_log"}


class ServingCard(NamedTuple):
    statement: dict
    evidence: dict
    sign1: cose.Sign1
    kid: bytes
    digest: str                  # sha256 of the serving card's bytes, hex

    @property
    def dawn(self) -> dict | None:
        return self.statement["dawn"]

    @property
    def simulated(self) -> bool:
        return self.evidence["backend"] == "sim"

    def receipt_public_key(self):
        return keys.load_public_key(self.statement["receipt_key"])


def statement_digest(statement: dict) -> bytes:
    """H(dcbor(statement)): the quote's qualifying data."""
    return hashlib.sha256(cbor.dumps(statement)).digest()


def seal(statement: dict, evidence: dict, release_key) -> bytes:
    validate_statement(statement)
    payload = cbor.dumps({"format": FORMAT, "statement": statement, "evidence": evidence})
    return cose.sign1(payload, release_key, kid=keys.key_id(release_key.public_key()))


def open_serving_card(data: bytes) -> ServingCard:
    """Parse strictly; CardFormatError names the first wrong field. Makes no trust decision."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_SERVING_CARD_BYTES:
        raise CardFormatError("serving_card", f"expected at most {MAX_SERVING_CARD_BYTES} bytes")
    msg = cose.parse_sign1(bytes(data), require_tag=True, deterministic=True, field="serving_card")
    if msg.kid is None or len(msg.kid) != 32:
        raise CardFormatError("serving_card.protected.kid", "expected 32 bytes")
    payload = cbor.loads(msg.payload, deterministic=True, field="serving_card.payload")
    if type(payload) is not dict or set(payload) != {"format", "statement", "evidence"}:
        raise CardFormatError("serving_card.payload", "expected exactly format, statement, evidence")
    if payload["format"] != FORMAT:
        raise CardFormatError("serving_card.payload.format", f"expected {FORMAT!r}")
    validate_statement(payload["statement"])
    _validate_evidence(payload["evidence"])
    return ServingCard(payload["statement"], payload["evidence"], msg, msg.kid,
                       hashlib.sha256(bytes(data)).hexdigest())


def is_serving_card(data: bytes) -> bool:
    """Whether ``data`` is a COSE_Sign1 whose payload says it is a serving card (not a
    trust decision: a service picks the checks to run by it)."""
    try:
        msg = cose.parse_sign1(bytes(data), require_tag=True, field="card")
        payload = cbor.loads(msg.payload, field="card.payload")
    except (LaminateError, TypeError):
        return False
    return type(payload) is dict and payload.get("format") == FORMAT


def validate_statement(s) -> None:
    where = "serving_card.statement"
    _fields(s, _STATEMENT_FIELDS, where)
    if s["type"] != STATEMENT_TYPE:
        raise CardFormatError(f"{where}.type", f"expected {STATEMENT_TYPE!r}")
    for name in ("deployment", "model_sha256", "card_sha256"):
        if type(s[name]) is not str or not _HEX64.fullmatch(s[name]):
            raise CardFormatError(f"{where}.{name}", "expected 64 lowercase hex digits")
    if type(s["classes"]) is not int or not 2 <= s["classes"] <= MAX_CLASSES:
        raise CardFormatError(f"{where}.classes", f"expected an integer in [2, {MAX_CLASSES}]")
    shape = s["input_shape"]
    if (type(shape) is not list or not 1 <= len(shape) <= 8
            or any(type(d) is not int or not 1 <= d <= 1 << 20 for d in shape)):
        raise CardFormatError(f"{where}.input_shape", "expected 1 to 8 positive integers")
    if s["answers"] not in ANSWERS:
        raise CardFormatError(f"{where}.answers", f"expected one of {', '.join(ANSWERS)}")
    if type(s["receipt_key"]) is not bytes or len(s["receipt_key"]) > 512:
        raise CardFormatError(f"{where}.receipt_key", "expected a SubjectPublicKeyInfo (DER)")
    try:
        keys.load_public_key(s["receipt_key"])
    except LaminateError:
        raise CardFormatError(f"{where}.receipt_key", "not an Ed25519 or P-256 public key") from None
    d = s["dawn"]
    if d is None:
        return
    _fields(d, {"scheme", "rate", "key_commitment"}, f"{where}.dawn")
    if d["scheme"] != dawn.SCHEME:
        raise CardFormatError(f"{where}.dawn.scheme", f"expected {dawn.SCHEME!r}")
    if type(d["rate"]) is not float or not 0.0 < d["rate"] <= dawn.MAX_RATE:
        raise CardFormatError(f"{where}.dawn.rate", f"expected a float in (0, {dawn.MAX_RATE}]")
    if type(d["key_commitment"]) is not str or not _HEX64.fullmatch(d["key_commitment"]):
        raise CardFormatError(f"{where}.dawn.key_commitment", "expected 64 lowercase hex digits")
    if s["classes"] < 3:
        raise CardFormatError(f"{where}.classes", "DAWN needs at least 3 classes (2 wrong ones)")


def _validate_evidence(e) -> None:
    where = "serving_card.evidence"
    _fields(e, _EVIDENCE_FIELDS, where)
    for name in ("backend",):
        if type(e[name]) is not str:
            raise CardFormatError(f"{where}.{name}", "expected text")
    for name in ("quote", "signature"):
        if type(e[name]) is not bytes:
            raise CardFormatError(f"{where}.{name}", "expected bytes")
    if type(e["cert_chain"]) is not list or not all(type(c) is bytes for c in e["cert_chain"]):
        raise CardFormatError(f"{where}.cert_chain", "expected a list of DER certificates")
    if type(e["extra"]) is not dict:
        raise CardFormatError(f"{where}.extra", "expected a map")
    log = e["event_log"]
    if type(log) is not list or len(log) != 2:
        raise CardFormatError(f"{where}.event_log", "expected two events (code, serving)")
    for i, event in enumerate(log):
        _fields(event, {"register", "type", "digest", "data"}, f"{where}.event_log[{i}]")
        if type(event["register"]) is not int or type(event["type"]) is not str \
                or type(event["digest"]) is not bytes or len(event["digest"]) != 32:
            raise CardFormatError(f"{where}.event_log[{i}]", "expected register, type, 32-byte digest")


def _fields(value, expected: set, where: str) -> None:
    if type(value) is not dict:
        raise CardFormatError(where, "expected a map")
    if set(value) != expected:
        extra = sorted(set(value) - expected, key=str)
        missing = sorted(expected - set(value))
        raise CardFormatError(f"{where}.{(extra or missing)[0]}",
                              "unknown field" if extra else "missing")


def appraise_serving_card(data: bytes, *, policy, model_sha256: str | None = None
                          ) -> tuple[Result, ServingCard | None]:
    """Every check on a serving card, the way `verifier.appraise` checks a model card."""
    try:
        card = open_serving_card(data)
    except CardFormatError as exc:
        return Result([Check("serving_card_format", CONTRAINDICATED, exc.field, exc.reason)],
                      policy_id=policy.policy_id), None
    s, evidence = card.statement, card.evidence
    checks = [Check("serving_card_format", AFFIRMING, "serving_card", f"{FORMAT}, all fields valid")]
    checks.append(check_release_signature(card, policy))
    allowed = evidence["backend"] in policy.allow_backends
    checks.append(check_backend(evidence["backend"], allowed, policy))
    evidence_checks, quoted = check_evidence(evidence, policy)
    checks.extend(evidence_checks)
    log = evidence["event_log"]
    if quoted is None:
        why = "not checked: quote signature did not verify"
        checks += [Check(name, SKIPPED, field, why) for name, field in (
            ("qualifying_data", "serving_card.evidence.quote"),
            ("log_replay", "serving_card.evidence.event_log"),
            ("statement_in_log", "serving_card.statement"))]
    else:
        if quoted.qualifying_data != statement_digest(s):
            checks.append(Check("qualifying_data", CONTRAINDICATED, "serving_card.statement",
                                "statement digest differs from the quote's qualifying data: "
                                "the statement was changed after attestation"))
        else:
            checks.append(Check("qualifying_data", AFFIRMING, "serving_card.evidence.quote",
                                "quote binds H(statement)"))
        replay = check_log_replay(log, [cbor.dumps(e["data"]) for e in log], quoted)
        checks.append(replay)
        checks.append(_statement_in_log(s, log))
    checks.append(_code_identity(log[0], policy))
    if model_sha256 is not None:
        ok = model_sha256 == s["model_sha256"]
        checks.append(Check("model_digest", AFFIRMING if ok else CONTRAINDICATED,
                            "serving_card.statement.model_sha256",
                            "matches the given model" if ok else
                            f"the serving card serves {s['model_sha256'][:16]}..., "
                            f"not {model_sha256[:16]}..."))
    if card.simulated and allowed:
        checks.append(Check("simulated_hardware", WARNING, "serving_card.evidence.backend",
                            "evidence comes from the software simulator"))
    checks = [c if c.field.startswith("serving_card") else
              c._replace(field="serving_card." + c.field.removeprefix("card.")) for c in checks]
    return Result(checks, policy_id=policy.policy_id, backend=evidence["backend"],
                  simulated=card.simulated), card


def _statement_in_log(statement, log) -> Check:
    where = "serving_card.evidence.event_log"
    expected = (("code", CODE_REGISTER), (STATEMENT_TYPE, DATA_REGISTER))
    for i, (event, (kind, register)) in enumerate(zip(log, expected)):
        if event["type"] != kind or event["register"] != register:
            return Check("statement_in_log", CONTRAINDICATED, f"{where}[{i}]",
                         f"expected event {kind!r} in register {register}")
    if cbor.dumps(log[1]["data"]) != cbor.dumps(statement):
        return Check("statement_in_log", CONTRAINDICATED, "serving_card.statement",
                     "differs from the measured serving event")
    return Check("statement_in_log", AFFIRMING, where, "code first, then the measured statement")


def _code_identity(event, policy) -> Check:
    field = "serving_card.evidence.event_log[0].data.wrapper_sha256"
    data = event.get("data")
    wrapper = data.get("wrapper_sha256") if isinstance(data, dict) else None
    if isinstance(wrapper, str) and wrapper in policy.reference_values.code:
        return Check("code_identity", AFFIRMING, field,
                     f"serving code {wrapper[:16]}... is a reference value of policy {policy.policy_id}")
    return Check("code_identity", CONTRAINDICATED, field,
                 f"serving code {str(wrapper)[:16]}... is not a reference value of policy "
                 f"{policy.policy_id}")


def check_opening(card: ServingCard, opening: dawn.Opening) -> Check:
    """Does the owner's revealed DAWN key open the serving card's key commitment?"""
    field = "serving_card.statement.dawn.key_commitment"
    if card.dawn is None:
        return Check("dawn_key_commitment", CONTRAINDICATED, "serving_card.statement.dawn",
                     "this deployment served without DAWN")
    if not opening.opens(card.dawn["key_commitment"]):
        return Check("dawn_key_commitment", CONTRAINDICATED, field,
                     "H(salt || key) of the opening differs from the committed value")
    return Check("dawn_key_commitment", AFFIRMING, field, "the opening opens the commitment")
