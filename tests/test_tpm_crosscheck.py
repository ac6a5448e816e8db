"""Cross-implementation: our TPM evidence against tpm2-tools, both ways, on one swtpm.

Our quote must verify with the tools' independent checker, and a quote the tools make
over PCRs they extended must pass our parser and checks, including an AK the tools
created and enrolled through our registrar with the tools' credential activation.
"""
import hashlib
import os
import shutil
import struct
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from swtpm import Swtpm, issuer_der, require_swtpm, trusting_policy

require_swtpm()
TOOLS = ("tpm2_checkquote", "tpm2_quote", "tpm2_pcrextend", "tpm2_createek", "tpm2_createak",
         "tpm2_activatecredential")
if any(shutil.which(t) is None for t in TOOLS):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI must run the cross-implementation tests: tpm2-tools missing")
    pytest.skip("tpm2-tools not installed (apt-get install tpm2-tools)", allow_module_level=True)

from attest.tpm_backend import TpmBackend  # noqa: E402
from verifier import tpm_evidence  # noqa: E402
from verifier import tpm_structs as ts
from verifier.tpm_trust import Registrar  # noqa: E402

NONCE = hashlib.sha256(b"claims digest").digest()


def H(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    with Swtpm(tmp_path_factory.mktemp("xtpm")) as t:
        yield t


def tools(tpm, cwd, *args):
    env = dict(os.environ, TPM2TOOLS_TCTI=tpm.tcti)
    run = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    return run


def ok(run):
    assert run.returncode == 0, run.stderr
    return run


def flush(tpm, cwd):
    """Without a resource manager the tools leave objects loaded; a TPM has few slots."""
    ok(tools(tpm, cwd, "tpm2_flushcontext", "-t"))
    ok(tools(tpm, cwd, "tpm2_flushcontext", "-s"))


def our_quote(tpm, tmp_path):
    backend = TpmBackend(tpm.tcti, state_dir=tmp_path / "state", require_enrollment=False)
    try:
        backend.start([16, 23])
        backend.extend({"register": 23, "type": "t", "digest": H(b"event"), "data": None})
        evidence = backend.quote(NONCE)
        pcrs = backend.read(16) + backend.read(23)
    finally:
        backend.close()
    ak = ts.parse_public(evidence["extra"]["ak_public"]).public_key()
    (tmp_path / "ak.pem").write_bytes(ak.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "quote.bin").write_bytes(evidence["quote"])
    (tmp_path / "sig.bin").write_bytes(evidence["signature"])
    (tmp_path / "pcrs.bin").write_bytes(pcrs)
    return evidence


def checkquote(tpm, tmp_path, nonce):
    return tools(tpm, tmp_path, "tpm2_checkquote", "-u", "ak.pem", "-m", "quote.bin",
                 "-s", "sig.bin", "-q", nonce.hex(), "-g", "sha256",
                 "-f", "pcrs.bin", "-l", "sha256:16,23")


def test_our_quote_verifies_with_tpm2_checkquote(tpm, tmp_path):
    our_quote(tpm, tmp_path)
    ok(checkquote(tpm, tmp_path, NONCE))


def test_tpm2_checkquote_rejects_our_quote_with_other_nonce_or_pcrs(tpm, tmp_path):
    our_quote(tpm, tmp_path)
    assert checkquote(tpm, tmp_path, H(b"other")).returncode != 0
    pcrs = (tmp_path / "pcrs.bin").read_bytes()
    (tmp_path / "pcrs.bin").write_bytes(pcrs[:-1] + bytes([pcrs[-1] ^ 1]))
    assert checkquote(tpm, tmp_path, NONCE).returncode != 0


def tools_credential_file(blob: bytes, secret: bytes) -> bytes:
    """The tools' credential file: magic, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET."""
    return struct.pack(">II", 0xBADCC0DE, 1) + blob + secret


def test_tools_quote_passes_our_checks_with_tools_enrolled_ak(tpm, tmp_path):
    d = tmp_path
    ok(tools(tpm, d, "tpm2_pcrreset", "16", "23"))
    e1, e2 = H(b"code"), H(b"model")
    ok(tools(tpm, d, "tpm2_pcrextend", f"16:sha256={e1.hex()}"))
    ok(tools(tpm, d, "tpm2_pcrextend", f"23:sha256={e2.hex()}"))
    ok(tools(tpm, d, "tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"))
    flush(tpm, d)
    ok(tools(tpm, d, "tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256",
             "-s", "ecdsa", "-u", "ak.pub", "-n", "ak.name"))
    flush(tpm, d)
    ok(tools(tpm, d, "tpm2_nvread", "0x01c00002", "-o", "ek.der"))

    # enrollment: our registrar challenges, the tools activate the credential
    registrar = Registrar.create([tpm.root_pem])
    ek_chain = [(d / "ek.der").read_bytes(), issuer_der(tpm)]
    challenge = registrar.challenge(ek_chain, (d / "ek.pub").read_bytes(), (d / "ak.pub").read_bytes())
    (d / "cred.in").write_bytes(tools_credential_file(challenge.credential_blob,
                                                      challenge.encrypted_secret))
    ok(tools(tpm, d, "tpm2_startauthsession", "--policy-session", "-S", "session.ctx"))
    ok(tools(tpm, d, "tpm2_policysecret", "-S", "session.ctx", "-c", "e"))
    ok(tools(tpm, d, "tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", "cred.in",
             "-o", "secret.out", "-P", "session:session.ctx"))
    flush(tpm, d)
    ak_cert = registrar.complete(challenge, (d / "secret.out").read_bytes())

    ok(tools(tpm, d, "tpm2_quote", "-c", "ak.ctx", "-l", "sha256:16,23", "-q", NONCE.hex(),
             "-m", "quote.bin", "-s", "sig.bin", "-o", "pcrs.bin", "-g", "sha256"))
    flush(tpm, d)
    evidence = {"backend": "tpm", "quote": (d / "quote.bin").read_bytes(),
                "signature": (d / "sig.bin").read_bytes(), "cert_chain": ek_chain,
                "extra": {"ak_public": (d / "ak.pub").read_bytes(),
                          "ak_name": (d / "ak.name").read_bytes(),
                          "ek_public": (d / "ek.pub").read_bytes(),
                          "pcr_map": [[16, 16], [23, 23]],
                          "binding": {"method": "credential-activation",
                                      "ak_certificate": ak_cert, "chain": []}}}
    checks, quoted = tpm_evidence.check_evidence(evidence, trusting_policy(tpm, registrar))
    assert {c.check: c.status for c in checks} == {
        "cert_chain": "affirming", "quote_signature": "affirming",
        "pcr_selection": "affirming", "tpm_clock": "affirming"}, checks
    assert quoted.qualifying_data == NONCE
    assert quoted.register_digest == H(H(bytes(32), e1), H(bytes(32), e2))


def test_wrong_credential_answer_gets_no_ak_certificate(tpm, tmp_path):
    from cards.errors import LaminateError
    backend = TpmBackend(tpm.tcti, state_dir=tmp_path, require_enrollment=False)
    try:
        registrar = Registrar.create([tpm.root_pem])
        challenge = registrar.challenge([backend.ek_cert, issuer_der(tpm)], backend.ek_public,
                                        backend.ak_public)
        answer = backend.activate_credential(challenge.credential_blob, challenge.encrypted_secret)
        assert answer == challenge.expected
        with pytest.raises(LaminateError, match="did not recover"):
            registrar.complete(challenge, bytes(len(answer)))
    finally:
        backend.close()
