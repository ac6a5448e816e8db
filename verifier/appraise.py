"""Appraise a card: every check that can run is run and reported.

A deployer fixing a pipeline wants the whole list of problems at once, so a failure does
not stop the appraisal; only checks whose input a failed check was meant to vouch for
(e.g. the log replay after a bad quote signature) are reported as not checked.
"""
from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

from cards import cbor, cose, schema
from cards.card import open_card
from cards.errors import CardFormatError, LaminateError
from cards.ewe import SCHEMES as EWE_SCHEMES
from verifier import (
    adversarial,
    binomial,
    conflicts,
    distributed,
    dp_check,
    provenance,
    radioactive,
    receipts,
)
from verifier.evidence import check_evidence
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED, WARNING, Check, Result

_ZERO = bytes(32)
_HEX64 = re.compile(r"[0-9a-f]{64}")
# The exact power computation grows faster than quadratically with the trigger count,
# which is read before anything is authenticated: past this bound a hostile card could
# stall the verifier for hours (1,000 triggers take 1-2 s; the wrapper's default is 100).
MAX_POWER_TRIGGERS = 1000


def appraise(card_bytes: bytes, *, policy, model_path=None, model_sha256=None,
             log_key=None) -> Result:
    """Appraise `card_bytes` against `policy`, optionally binding it to a model file or
    digest, and, with `log_key` (a transparency log's public key), checking that a
    receipt the card carries proves it is in that log. Raises LaminateError only for caller mistakes (missing model file, bad hex);
    anything wrong with the card itself is a contraindicated check."""
    expected_model = _model_digests(model_path, model_sha256)
    try:
        card = open_card(card_bytes)
    except CardFormatError as exc:
        return Result([Check("card_format", CONTRAINDICATED, exc.field or "card", exc.reason)],
                      policy_id=policy.policy_id)
    except LaminateError as exc:
        return Result([Check("card_format", CONTRAINDICATED, "card", str(exc))],
                      policy_id=policy.policy_id)

    claims, evidence = card.claims, card.evidence
    backend = card.backend
    checks = [Check("card_format", AFFIRMING, "card",
                    f"schema version {card.payload['schema_version']}, all fields valid")]
    checks.append(check_release_signature(card, policy))
    allowed = backend in policy.allow_backends
    checks.append(check_backend(backend, allowed, policy))
    if checks[1].status == CONTRAINDICATED:
        return _stopped(checks, "release signature failed", policy, card)

    evidence_checks, quoted = check_evidence(evidence, policy)
    checks.extend(evidence_checks)
    if any(c.check == "cert_chain" and c.status == CONTRAINDICATED for c in evidence_checks):
        return _stopped(checks, "trust chain failed", policy, card)
    if quoted is None:
        failed = next((c for c in evidence_checks if c.check == "quote_signature"), None)
        why = ("not checked: quote signature failed" if failed and failed.status == CONTRAINDICATED
               else "not checked: quote signature not checked")
        checks.append(Check("qualifying_data", SKIPPED, "evidence.quote", why))
        checks.append(Check("log_replay", SKIPPED, "evidence.event_log", why))
        checks.append(Check("claims_in_log", SKIPPED, "claims", why))
    else:
        checks.append(_qualifying_data(card.encoded.claims, quoted))
        replay = check_log_replay(evidence["event_log"], card.encoded.event_data, quoted)
        checks.append(replay)
        if replay.status == AFFIRMING:
            checks.append(_claims_in_log(claims, evidence["event_log"], card.encoded))
        else:
            checks.append(Check("claims_in_log", SKIPPED, "claims", "not checked: log replay failed"))

    checks.append(_code_identity(claims, policy))
    checks.append(provenance.check_entry_point(claims, policy))
    checks.append(provenance.check_libraries(claims, policy))
    checks.append(provenance.check_start(claims, policy))
    checks.append(_model_digest(claims, expected_model))
    transparency = receipts.check_embedded(card, log_key)
    if transparency is not None:
        checks.append(transparency)
    for predicate in policy.predicates:
        holds, reason = predicate.evaluate(claims)
        checks.append(Check(f"policy:{predicate.text}", AFFIRMING if holds else CONTRAINDICATED,
                            predicate.field, reason))
    dp = claims["defenses"]["dp"]
    dp_config = dp_check.check_config(dp, claims, policy.dp.epsilon_tolerance)
    if dp_config is not None:
        checks.append(dp_config)
    if dp is not None:
        checks.append(_dp_epsilon(dp, policy))
        checks.append(dp_check.check_delta(dp, claims["dataset"]["train"]["records"], policy))
        checks.append(dp_check.check_non_dp_records(dp, policy))
        checks.append(dp_check.check_accounting(
            dp, claims["start"], policy,
            radioactive=claims["defenses"].get("radioactive") is not None))
    checks.extend(distributed.checks(claims))
    watermark = claims["defenses"]["watermark"]
    if watermark is not None and watermark["scheme"] in EWE_SCHEMES:
        from verifier import ewe_checks

        checks += ewe_checks.checks(watermark, claims, policy)
    elif watermark is not None:
        checks.append(_watermark_power(watermark, claims["evaluation"], policy))
    adversarial_config = adversarial.check_config(claims)
    if adversarial_config is not None:
        checks.append(adversarial_config)
    checks.extend(radioactive.checks(claims))
    checks.extend(conflicts.check_conflicts(claims))
    if card.simulated and allowed:
        checks.append(Check("simulated_hardware", WARNING, "evidence.backend",
                            "evidence comes from the software simulator: it shows the card is "
                            "internally consistent, not that real hardware measured anything"))
    return Result(checks, policy_id=policy.policy_id, backend=backend, simulated=card.simulated)


def _stopped(checks, why: str, policy, card) -> Result:
    """The result of a card whose signer or hardware root is not trusted: the claims of
    such a card prove nothing, so the costly checks over them (log replay, DP accounting,
    watermark power) are not run for anyone who asks; the failures say why."""
    checks.append(Check("remaining_checks", SKIPPED, "card",
                        f"not checked: {why}, so the card's claims are not evaluated"))
    return Result(checks, policy_id=policy.policy_id, backend=card.backend,
                  simulated=card.simulated)


def _model_digests(model_path, model_sha256) -> list:
    """Digests the caller expects the card's model to have: [(source, hex, size|None)]."""
    expected: list[tuple[str, str, int | None]] = []
    if model_path is not None:
        path = Path(model_path)
        if not path.is_file():
            raise LaminateError(f"{path}: model file not found" if not path.exists()
                                else f"{path}: model is not a regular file")
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        expected.append((f"model file {path.name}", h.hexdigest(), path.stat().st_size))
    if model_sha256 is not None:
        digest = model_sha256.strip().lower()
        if not _HEX64.fullmatch(digest):
            raise LaminateError(f"--model-sha256: expected 64 hex digits, got {model_sha256!r}")
        expected.append(("given model digest", digest, None))
    return expected


def check_release_signature(card, policy) -> Check:
    field = "card.signature"
    key = policy.release_keys.get(card.kid)
    if key is None:
        kid = card.kid.hex()[:16] if isinstance(card.kid, bytes) else "?"
        return Check("release_signature", CONTRAINDICATED, "card.kid",
                     f"release key {kid}... is not trusted by policy {policy.policy_id}")
    try:
        ok = cose.verify_sign1(card.sign1, key)
    except (ValueError, TypeError, LaminateError):
        ok = False
    if not ok:
        return Check("release_signature", CONTRAINDICATED, field,
                     "card signature does not verify with the trusted release key")
    return Check("release_signature", AFFIRMING, field,
                 f"signed by trusted release key {card.kid.hex()[:16]}...")


def check_backend(backend, allowed, policy) -> Check:
    if not allowed:
        reason = f"backend {backend} is not allowed by policy {policy.policy_id}"
        if backend == "sim":
            reason += "; simulated hardware gives no guarantee"
        return Check("backend", CONTRAINDICATED, "evidence.backend", reason)
    guarantee = {"sim": "no hardware guarantee (allowed explicitly)",
                 "tpm": "log integrity against an attacker without the TPM's keys",
                 "tdx": "the TD's image and the log measured inside it, on genuine TDX",
                 "snp": "the VM's launch image and the log bound by software inside it, "
                        "on genuine SEV-SNP"}[backend]
    return Check("backend", AFFIRMING, "evidence.backend",
                 f"backend {backend} allowed by policy {policy.policy_id}: {guarantee}")


# dcbor({"data": d, "type": t}) is a map of two (0xa2), the "data" key, d, the "type" key,
# t: the keys have equal length and "data" sorts first (RFC 8949 §4.2.1).
_EVENT_HEAD = b"\xa2" + cbor.dumps("data")
_TYPE_KEY = cbor.dumps("type")
_EVENT_HASH = hashlib.sha256(_EVENT_HEAD)


@lru_cache(maxsize=64)
def _text(value: str) -> bytes:
    return cbor.dumps(value)


def _qualifying_data(claims_bytes, quoted) -> Check:
    if quoted.qualifying_data != hashlib.sha256(claims_bytes).digest():
        return Check("qualifying_data", CONTRAINDICATED, "claims",
                     "claims digest differs from the qualifying data the quote signed: "
                     "the claims were changed after attestation")
    return Check("qualifying_data", AFFIRMING, "evidence.quote.qualifying_data",
                 "quote binds H(claims)")


def _event_digest(event, data: bytes) -> bytes:
    """The event's H(dcbor({type, data})), from the encoding of its data open_card kept,
    hashed in place."""
    digest = _EVENT_HASH.copy()
    digest.update(data)
    digest.update(_TYPE_KEY)
    digest.update(_text(event["type"]))
    return digest.digest()


def check_log_replay(log, event_data, quoted) -> Check:
    registers: dict = {}
    covered = set(quoted.registers)
    for i, (event, data) in enumerate(zip(log, event_data)):
        digest = _event_digest(event, data)
        if digest != event["digest"]:
            return Check("log_replay", CONTRAINDICATED, f"evidence.event_log[{i}].digest",
                         f"event {event['type']!r} digest does not match its type and data")
        register = event["register"]
        if register not in covered:
            return Check("log_replay", CONTRAINDICATED, f"evidence.event_log[{i}].register",
                         f"event {event['type']!r} extends register {register}, "
                         "which the quote does not cover")
        registers[register] = hashlib.sha256(registers.get(register, _ZERO) + digest).digest()
    replayed = hashlib.sha256(b"".join(registers.get(r, _ZERO) for r in quoted.registers)).digest()
    if replayed != quoted.register_digest:
        return Check("log_replay", CONTRAINDICATED, "evidence.event_log",
                     f"replaying {len(log)} events does not reproduce the quoted register digest")
    return Check("log_replay", AFFIRMING, "evidence.event_log",
                 f"{len(log)} events replay to the quoted registers {quoted.registers}")


def _claims_in_log(claims, log, encoded) -> Check:
    expected = schema.expected_events(claims)
    actual = [event["type"] for event in log]
    wanted = [spec.type for spec in expected]
    if actual != wanted:
        i = next((i for i, (a, e) in enumerate(zip(actual, wanted)) if a != e),
                 min(len(actual), len(wanted)))
        want = repr(wanted[i]) if i < len(wanted) else "no further event"
        got = repr(actual[i]) if i < len(actual) else "the end of the log"
        if i == 0 and wanted[0] == "code":
            reason = f"the first event must measure the code, got {got}"
        else:
            reason = f"expected event {want}, got {got}"
        return Check("claims_in_log", CONTRAINDICATED, f"evidence.event_log[{i}].type", reason)
    for i, (spec, event) in enumerate(zip(expected, log)):
        if event["register"] != spec.register:
            return Check("claims_in_log", CONTRAINDICATED, f"evidence.event_log[{i}].register",
                         f"event {spec.type!r} extends register {event['register']}, "
                         f"FORMAT.md assigns register {spec.register}")
    # Equal deterministic encodings: equal values of identical types (1, 1.0 and True differ).
    for spec, data in zip(expected, encoded.event_data):
        if encoded.claim_events[spec.type] != data:
            return Check("claims_in_log", CONTRAINDICATED, spec.field,
                         f"differs from the measured {spec.type!r} event")
    training = claims["training"]
    if hashlib.sha256(encoded.config).hexdigest() != training["config_sha256"]:
        return Check("claims_in_log", CONTRAINDICATED, "claims.training.config_sha256",
                     "is not H(dcbor(config))")
    return Check("claims_in_log", AFFIRMING, "claims",
                 f"every claim section matches its measured event ({len(log)} events, code first)")


def _code_identity(claims, policy) -> Check:
    field = "claims.training.code.wrapper_sha256"
    wrapper = claims["training"]["code"]["wrapper_sha256"]
    if wrapper in policy.reference_values.code:
        return Check("code_identity", AFFIRMING, field,
                     f"wrapper code {wrapper[:16]}... is a reference value of policy {policy.policy_id}")
    if not policy.reference_values.code:
        return Check("code_identity", CONTRAINDICATED, field,
                     f"policy {policy.policy_id} pins no code reference values; wrapper code "
                     f"{wrapper[:16]}... is unknown")
    return Check("code_identity", CONTRAINDICATED, field,
                 f"wrapper code {wrapper[:16]}... is not a reference value of policy {policy.policy_id}")


def _model_digest(claims, expected) -> Check:
    model = claims["model"]
    if not expected:
        return Check("model_digest", WARNING, "claims.model.sha256",
                     "no model given: the card is not bound to the file you deploy "
                     "(pass --model or --model-sha256)")
    for source, digest, size in expected:
        if digest != model["sha256"]:
            return Check("model_digest", CONTRAINDICATED, "claims.model.sha256",
                         f"{source} has sha256 {digest[:16]}..., the card says {model['sha256'][:16]}...")
        if size is not None and size != model["size"]:
            return Check("model_digest", CONTRAINDICATED, "claims.model.size",
                         f"{source} has {size} bytes, the card says {model['size']}")
    return Check("model_digest", AFFIRMING, "claims.model.sha256",
                 f"{' and '.join(s for s, _, _ in expected)} "
                 f"{'match' if len(expected) > 1 else 'matches'} the measured model")


def _dp_epsilon(dp, policy) -> Check:
    field = "claims.defenses.dp.epsilon"
    problem = dp_check.check_parameters(dp)
    if problem:
        return Check("dp_epsilon", CONTRAINDICATED, "claims.defenses.dp", problem)
    try:
        recomputed = dp_check.rdp_epsilon(float(dp["noise_multiplier"]), float(dp["sample_rate"]),
                                          dp["steps"], float(dp["delta"]))
    except dp_check.AccountantUnavailable as exc:
        return Check("dp_epsilon", WARNING, field,
                     f"epsilon {dp['epsilon']:g} not recomputed: {exc} (install opacus to check it)")
    except (ArithmeticError, ValueError) as exc:  # the prover's accountant would fail alike
        return Check("dp_epsilon", CONTRAINDICATED, "claims.defenses.dp",
                     f"the RDP accountant cannot compute an epsilon for these parameters "
                     f"({type(exc).__name__})")
    claimed = dp["epsilon"]
    if not dp_check.within(claimed, recomputed, policy.dp.epsilon_tolerance):
        return Check("dp_epsilon", CONTRAINDICATED, field,
                     f"claimed epsilon {claimed:.6g} but the RDP accountant gives {recomputed:.6g} "
                     f"for noise {dp['noise_multiplier']:g}, sample rate {dp['sample_rate']:g}, "
                     f"{dp['steps']} steps, delta {dp['delta']:g}")
    version = dp_check.opacus_version() or "?"
    return Check("dp_epsilon", AFFIRMING, field,
                 f"epsilon {claimed:.4g} matches Opacus {version} RDP analysis ({recomputed:.4g})")


@lru_cache(maxsize=1024)
def _power(accuracy, n, classes, alpha) -> float:
    """Exact power is a dynamic program over the trigger count: memoised per parameters."""
    return binomial.power(accuracy, n, classes, alpha)


def _watermark_power(watermark, evaluation, policy) -> Check:
    field = "claims.evaluation.watermark_accuracy"
    accuracy = evaluation.get("watermark_accuracy")
    if accuracy is None:
        return Check("watermark_power", WARNING, field,
                     "no measured watermark accuracy: ownership could not be shown")
    n, classes, alpha = watermark["trigger_count"], watermark["classes"], policy.ownership.alpha
    if n > MAX_POWER_TRIGGERS:
        return Check("watermark_power", WARNING, "claims.defenses.watermark.trigger_count",
                     f"not computed: {n} triggers is above the {MAX_POWER_TRIGGERS} this "
                     "verifier computes the ownership test's power for")
    power = _power(accuracy, n, classes, alpha)
    return power_check(power, f"power {power:.3f} at alpha {alpha:g} with {n} triggers, "
                       f"{classes} classes, watermark accuracy {accuracy:.3f}", field, policy)


def power_check(power: float, detail: str, field: str, policy) -> Check:
    """``watermark_power`` from a computed power, for either watermark scheme: a warning
    below the policy's minimum, since a copy would then likely not be shown."""
    if power < policy.ownership.min_power:
        return Check("watermark_power", WARNING, field,
                     f"{detail} is below {policy.ownership.min_power:g}: an ownership test "
                     "would likely fail to show ownership of a copy")
    return Check("watermark_power", AFFIRMING, field, detail)

