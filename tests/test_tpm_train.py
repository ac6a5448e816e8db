"""Acceptance: `laminate train … --backend tpm` on a real swtpm, then `laminate verify`.

The card is accepted under a policy trusting the swtpm CA (EK root) and the registrar
that enrolled the AK, rejected under the default policy, and rejected after each tamper
of the matrix, for the right reason.
"""
import json
import os
import subprocess
import sys

import pytest
import yaml

from swtpm import Swtpm, enrolled_backend, require_swtpm

require_swtpm()

from attest import measure  # noqa: E402
from cards import cbor, cose, keys  # noqa: E402
from cards.card import open_card  # noqa: E402
from verifier.tpm_trust import Registrar  # noqa: E402

LAMINATE = [sys.executable, "-m", "laminate"]
CONFIG = """name: tiny
dataset: {name: digits}
model: {arch: mlp, hidden: [16]}
training: {epochs: 1}
watermark: {enabled: true, trigger_count: 50}
"""


def run(*args, env):
    return subprocess.run([*LAMINATE, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tpmtrain")
    with Swtpm(root / "tpm") as tpm:
        registrar = Registrar.create([tpm.root_pem])
        enrolled_backend(tpm, registrar, root / "state").close()
        env = dict(os.environ, LAMINATE_TPM_DIR=str(root / "state"),
                   LAMINATE_HOME=str(root / "home"), OMP_NUM_THREADS="1")
        release = keys.generate_private_key("ed25519")
        keys.save_private_key(release, root / "release.pem")
        (root / "config.yaml").write_text(CONFIG)
        out = root / "out"
        reference = measure.code_claim()["wrapper_sha256"]
        done = run("train", root / "config.yaml", "--out", out, "--backend", "tpm",
                   "--tpm", tpm.tcti, "--release-key", root / "release.pem", env=env)
        assert done.returncode == 0, done.stderr
    (root / "ek-root.pem").write_bytes(tpm.root_pem)
    (root / "registrar.pem").write_bytes(registrar.ca_pem)
    (root / "policy.yaml").write_text(yaml.safe_dump({
        "policy_id": "swtpm-acceptance", "allow_backends": ["tpm"],
        "trusted_roots": ["ek-root.pem", "registrar.pem"],
        "trusted_release_keys": [str(out / "release-public.pem")],
        "reference_values": {"code": [reference]}}))
    return root, out, release, env


def verify(trained, card=None, model=None, policy=True):
    root, out, _, env = trained
    args = ["verify", card or out / "card.cbor", "--model", model or out / "model.onnx", "--json"]
    if policy:
        args += ["--policy", root / "policy.yaml"]
    done = run(*args, env=env)
    result = json.loads(done.stdout)
    return done.returncode, result, {c["check"] for c in result["checks"]
                                     if c["status"] == "contraindicated"}


@pytest.mark.slow
def test_tpm_card_verifies_under_a_policy_trusting_swtpm_ca(trained):
    code, result, bad = verify(trained)
    assert code == 0 and not bad, [c for c in result["checks"] if c["check"] in bad]
    assert result["backend"] == "tpm" and result["simulated"] is False
    assert {"cert_chain", "quote_signature", "log_replay", "qualifying_data"} <= {
        c["check"] for c in result["checks"] if c["status"] == "affirming"}


@pytest.mark.slow
def test_default_policy_rejects_untrusted_root(trained):
    code, _, bad = verify(trained, policy=False)
    assert code == 1 and {"release_signature"} <= bad


def resealed(trained, name, mutate):
    """A copy of the card with `mutate(payload)` applied, re-signed by the release key
    (the provider is the attacker: only the TPM evidence can catch the change)."""
    root, out, release, _ = trained
    payload = open_card((out / "card.cbor").read_bytes()).payload
    mutate(payload)
    path = root / f"{name}.cbor"
    path.write_bytes(cose.sign1(cbor.dumps(payload), release, kid=keys.key_id(release.public_key())))
    return path


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1:]


TAMPERS = {
    "claimed accuracy raised": (lambda p: p["claims"]["evaluation"].__setitem__("accuracy", 0.99),
                                "qualifying_data"),
    "event digest edited": (lambda p: p["evidence"]["event_log"][-1].__setitem__(
        "digest", flip(p["evidence"]["event_log"][-1]["digest"], 0)), "log_replay"),
    "quote byte flipped": (lambda p: p["evidence"].__setitem__(
        "quote", flip(p["evidence"]["quote"], 40)), "quote_signature"),
    "AK certificate removed": (lambda p: p["evidence"]["extra"].__setitem__(
        "binding", {"method": "none"}), "quote_signature"),
    "EK certificate dropped": (lambda p: p["evidence"].__setitem__(
        "cert_chain", p["evidence"]["cert_chain"][1:]), "cert_chain"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tamper_matrix_is_rejected(trained, name):
    mutate, check = TAMPERS[name]
    code, result, bad = verify(trained, card=resealed(trained, name.replace(" ", "-"), mutate))
    assert code == 1 and check in bad, result


@pytest.mark.slow
def test_swapped_model_file_and_unsigned_edit_are_rejected(trained):
    root, out, _, _ = trained
    model = root / "other.onnx"
    data = (out / "model.onnx").read_bytes()
    model.write_bytes(flip(data, len(data) - 1))
    code, _, bad = verify(trained, model=model)
    assert code == 1 and "model_digest" in bad
    card = root / "bitflip.cbor"
    raw = (out / "card.cbor").read_bytes()
    card.write_bytes(flip(raw, len(raw) - 1))     # inside the release signature
    code, _, bad = verify(trained, card=card)
    assert code == 1 and "release_signature" in bad
