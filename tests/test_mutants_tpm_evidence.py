"""TPM evidence refused for one malformed part at a time, against a real swtpm quote.

The tamper tests in test_tpm_backend.py attack signatures and bindings; these attack the
shapes around them (chain, AK attributes, register map, binding record) and the clock
rule over a series of quotes, each with the field and reason it must name.
"""
import copy
import hashlib
import struct

import pytest

from swtpm import Swtpm, enrolled_backend, require_swtpm, trusting_policy

require_swtpm()

from verifier import tpm_evidence  # noqa: E402
from verifier import tpm_structs as ts  # noqa: E402
from verifier.evidence import Quoted  # noqa: E402
from verifier.result import AFFIRMING, CONTRAINDICATED, SKIPPED  # noqa: E402
from verifier.tpm_trust import Registrar  # noqa: E402


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    root = tmp_path_factory.mktemp("tpm")
    tpm = Swtpm(root / "a")
    registrar = Registrar.create([tpm.root_pem])
    backend = enrolled_backend(tpm, registrar, root / "state")
    backend.start([16, 23])
    backend.extend({"register": 23, "type": "t", "digest": hashlib.sha256(b"x").digest(),
                    "data": None})
    evidence = backend.quote(hashlib.sha256(b"claims").digest())
    yield evidence, trusting_policy(tpm, registrar), registrar
    backend.close()
    tpm.stop()


def _checks(rig, tamper):
    evidence, policy, _ = rig
    evidence = copy.deepcopy(evidence)
    tamper(evidence)
    checks, quoted = tpm_evidence.check_evidence(evidence, policy)
    return {c.check: c for c in checks}, quoted


def _set(path, value):
    def tamper(evidence):
        target = evidence
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return tamper


def _attributes(flip):
    """Flip bits of the AK's objectAttributes (after size, type and nameAlg)."""
    def tamper(evidence):
        public = bytearray(evidence["extra"]["ak_public"])
        attrs = struct.unpack(">I", public[6:10])[0] ^ flip
        public[6:10] = struct.pack(">I", attrs)
        evidence["extra"]["ak_public"] = bytes(public)
        evidence["extra"]["ak_name"] = None
    return tamper


def test_untouched_quote_passes(rig):
    checks, quoted = _checks(rig, lambda e: None)
    assert {c.status for c in checks.values()} == {AFFIRMING}
    assert quoted.registers == [16, 23] and quoted.device.startswith("tpm:")


@pytest.mark.parametrize("chain, field, reason", [
    (None, "evidence.cert_chain", "expected [EK certificate, issuers...] as DER byte strings"),
    ([], "evidence.cert_chain", "expected [EK certificate, issuers...] as DER byte strings"),
    (["pem text"], "evidence.cert_chain",
     "expected [EK certificate, issuers...] as DER byte strings"),
    ([b"\x30\x03\x02\x01\x01"], "evidence.cert_chain", "not DER X.509 certificates"),
])
def test_ek_chain_of_the_wrong_shape(rig, chain, field, reason):
    checks, quoted = _checks(rig, _set(["cert_chain"], chain))
    assert (checks["cert_chain"].status, checks["cert_chain"].field,
            checks["cert_chain"].reason) == (CONTRAINDICATED, field, reason)
    binding = checks["quote_signature"]
    assert (binding.field, binding.reason) == \
        ("evidence.cert_chain", "no readable EK certificate to bind the AK to")
    assert quoted is None


def test_first_certificate_that_is_not_an_ek(rig):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    ca = x509.load_pem_x509_certificate(rig[2].ca_pem).public_bytes(Encoding.DER)
    checks, _ = _checks(rig, _set(["cert_chain"], [ca]))
    check = checks["cert_chain"]
    assert (check.field, check.reason) == (
        "evidence.cert_chain[0]", "first certificate is not an EK certificate (must be a non-CA "
        "certificate with the tcg-kp-EKCertificate extended key usage)")


@pytest.mark.parametrize("tamper, field, reason", [
    (_set(["extra"], [1]), "evidence.extra", "expected a map"),
    (_attributes(ts.TPMA_RESTRICTED), "evidence.extra.ak_public.objectAttributes",
     "the AK must be a fixedTPM, restricted signing key"),
    (_attributes(ts.TPMA_FIXEDTPM), "evidence.extra.ak_public.objectAttributes",
     "the AK must be a fixedTPM, restricted signing key"),
    (_attributes(ts.TPMA_DECRYPT), "evidence.extra.ak_public.objectAttributes",
     "the AK must be a fixedTPM, restricted signing key"),
    (_set(["extra", "pcr_map"], None), "evidence.extra.pcr_map",
     "expected [[register, pcr], ...] with indices 0..23"),
    (_set(["extra", "pcr_map"], []), "evidence.extra.pcr_map",
     "expected [[register, pcr], ...] with indices 0..23"),
    (_set(["extra", "pcr_map"], [[16, 16], [23, 24]]), "evidence.extra.pcr_map",
     "expected [[register, pcr], ...] with indices 0..23"),
    (_set(["extra", "pcr_map"], [[16, 16], [23]]), "evidence.extra.pcr_map",
     "expected [[register, pcr], ...] with indices 0..23"),
    (_set(["extra", "pcr_map"], [[16, True], [23, 23]]), "evidence.extra.pcr_map",
     "expected [[register, pcr], ...] with indices 0..23"),
    (_set(["extra", "pcr_map"], [[16, -1], [23, 23]]), "evidence.extra.pcr_map",
     "expected [[register, pcr], ...] with indices 0..23"),
    (_set(["extra", "pcr_map"], [(16, 16), (23, 23)]), "evidence.extra.pcr_map",
     "expected [[register, pcr], ...] with indices 0..23"),
    (_set(["extra", "pcr_map"], [[23, 16], [16, 23]]), "evidence.extra.pcr_map",
     "registers and PCRs must both be strictly ascending"),
    (_set(["extra", "pcr_map"], [[16, 23], [23, 16]]), "evidence.extra.pcr_map",
     "registers and PCRs must both be strictly ascending"),
    (_set(["extra", "pcr_map"], [[16, 16], [16, 23]]), "evidence.extra.pcr_map",
     "registers and PCRs must both be strictly ascending"),
    (_set(["extra", "binding"], "credential-activation"), "evidence.extra.binding",
     "AK binding method None: the AK must be enrolled by credential activation with a "
     "registrar the policy trusts"),
    (_set(["extra", "binding", "ak_certificate"], "der"), "evidence.extra.binding",
     "expected ak_certificate (DER) and chain [DER...]"),
    (_set(["extra", "binding", "chain"], b"der"), "evidence.extra.binding",
     "expected ak_certificate (DER) and chain [DER...]"),
    (_set(["extra", "binding", "chain"], ["der"]), "evidence.extra.binding",
     "expected ak_certificate (DER) and chain [DER...]"),
])
def test_quote_signature_refuses(rig, tamper, field, reason):
    checks, quoted = _checks(rig, tamper)
    check = checks["quote_signature"]
    assert (check.status, check.field, check.reason) == (CONTRAINDICATED, field, reason)
    assert quoted is None and "pcr_selection" not in checks


def _quoted(device, reset, restart, clock):
    return Quoted([16], bytes(32), bytes(32), device,
                  {"clock": clock, "resetCount": reset, "restartCount": restart})


@pytest.mark.parametrize("second, status, reason", [
    ((5, 2, 101), AFFIRMING, "counters and clock of tpm:a moved forward"),
    ((5, 2, 100), AFFIRMING, "counters and clock of tpm:a moved forward"),
    ((4, 9, 999), CONTRAINDICATED, "resetCount went back from 5 to 4"),
    ((5, 1, 999), CONTRAINDICATED, "restartCount went back from 2 to 1"),
    ((6, 0, 999), AFFIRMING, "counters and clock of tpm:a moved forward"),
    ((5, 2, 99), CONTRAINDICATED, "clock went back from 100 to 99"),
])
def test_clock_sequence(second, status, reason):
    checks = tpm_evidence.check_clock_sequence([_quoted("tpm:a", 5, 2, 100),
                                                _quoted("tpm:b", 0, 0, 0),
                                                _quoted("tpm:a", *second)])
    assert [(c.status, c.field, c.reason) for c in checks] == [(status, "quotes[2].clock", reason)]


def test_clock_sequence_skips_what_is_not_a_tpm_clock():
    """A simulator quote has no TPM clock; the first quote of a device has nothing to
    compare with; a clock field of the wrong type is skipped, not compared."""
    sim = Quoted([16], bytes(32), bytes(32), "sim-1", {"counter": 1})
    checks = tpm_evidence.check_clock_sequence([sim, _quoted("tpm:a", 1, 1, 5),
                                                _quoted("tpm:a", 1, "1", 6)])
    assert [(c.status, c.field) for c in checks] == [(SKIPPED, "quotes[0].clock"),
                                                     (SKIPPED, "quotes[2].clock")]


def _forged_ek(der: bytes) -> bytes:
    """The EK certificate re-issued with the same names, key and extensions, signed by a
    key no CA holds: only the signature says it was not issued by the chain's CA."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    ek = x509.load_der_x509_certificate(der)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(ek.subject).issuer_name(ek.issuer)
               .public_key(ek.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=1)))
    for ext in ek.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    forged = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    return forged.public_bytes(Encoding.DER)


def test_ek_certificate_not_signed_by_its_issuer(rig):
    """The chain check starts at the EK certificate itself: an issuer that chains to the
    root does not vouch for an EK certificate it did not sign."""
    chain = rig[0]["cert_chain"]
    assert len(chain) >= 2  # [EK, issuer]: the issuer alone would chain to the root
    checks, _ = _checks(rig, _set(["cert_chain"], [_forged_ek(chain[0]), *chain[1:]]))
    check = checks["cert_chain"]
    assert (check.status, check.field) == (CONTRAINDICATED, "evidence.cert_chain")
    assert check.reason.startswith("EK certificate: no trusted root issued"), check.reason


def test_quote_signature_names_the_attestation_key(rig):
    """The affirming reason quotes the AK name's first 20 hex digits (10 bytes), enough
    to tell keys apart in a report without the whole 34-byte name."""
    checks, _ = _checks(rig, lambda e: None)
    name = ts.parse_public(rig[0]["extra"]["ak_public"], "ak").name.hex()
    assert f"attestation key {name[:20]}…," in checks["quote_signature"].reason


def test_register_map_accepts_register_and_pcr_zero(rig):
    """Indices run 0..23 on both sides: register 0 and PCR 0 are legal (the quote here
    selects PCRs 16 and 23, so registers 0 and 1 map onto them)."""
    checks, quoted = _checks(rig, _set(["extra", "pcr_map"], [[0, 16], [1, 23]]))
    assert checks["pcr_selection"].status == AFFIRMING, checks["pcr_selection"].reason
    assert quoted.registers == [0, 1]
    assert tpm_evidence._register_map([[0, 0]]) == [(0, 0)]
