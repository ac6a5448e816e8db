"""Acceptance: `laminate train … --backend snp|tdx` in a (fake) confidential VM, then
`laminate verify`: accepted under a policy trusting the test chain (AMD ARK, or the test
DCAP root) and pinning the measurements, refused under the default policy, and refused
after each tamper for the check's own reason."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from attest import measure
from cards import cbor, cose, keys
from cards.card import open_card
from tee_fake import MEASUREMENT, FakeKernel

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
    root = tmp_path_factory.mktemp("snptrain")
    release = keys.generate_private_key("ed25519")
    keys.save_private_key(release, root / "release.pem")
    (root / "config.yaml").write_text(CONFIG)
    out = root / "out"
    with FakeKernel(root / "tsm") as kernel:
        env = dict(os.environ, LAMINATE_TSM_REPORT=str(kernel.report_dir),
                   LAMINATE_HOME=str(root / "home"), OMP_NUM_THREADS="1")
        done = run("train", root / "config.yaml", "--out", out, "--backend", "snp",
                   "--release-key", root / "release.pem", env=env)
        assert done.returncode == 0, done.stderr
        assert kernel.answered == 1
    (root / "test-ark.pem").write_bytes(kernel.chain.ark_pem)
    (root / "policy.yaml").write_text(yaml.safe_dump({
        "policy_id": "snp-acceptance", "allow_backends": ["snp"],
        "trusted_roots": ["test-ark.pem"],
        "trusted_release_keys": [str(out / "release-public.pem")],
        "reference_values": {"code": [measure.code_claim()["wrapper_sha256"]],
                             "snp": {"measurement": [MEASUREMENT.hex()]}}}))
    return root, out, release, env


def verify(trained, card=None, policy=True):
    root, out, _, env = trained
    args = ["verify", card or out / "card.cbor", "--model", out / "model.onnx", "--json"]
    if policy:
        args += ["--policy", root / "policy.yaml"]
    done = run(*args, env=env)
    result = json.loads(done.stdout)
    return done.returncode, result, {c["check"]: c["field"] for c in result["checks"]
                                     if c["status"] == "contraindicated"}


@pytest.mark.slow
def test_snp_card_verifies_under_a_policy_trusting_the_test_chain(trained):
    code, result, bad = verify(trained)
    assert code == 0 and not bad, result
    assert result["backend"] == "snp" and result["simulated"] is False
    assert {"cert_chain", "quote_signature", "tee_tcb", "tee_measurement", "tee_debug",
            "qualifying_data", "log_replay", "claims_in_log"} <= {
        c["check"] for c in result["checks"] if c["status"] == "affirming"}


@pytest.mark.slow
def test_default_policy_refuses_it(trained):
    code, _, bad = verify(trained, policy=False)
    assert code == 1 and {"backend", "release_signature"} <= set(bad)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1:]


TAMPERS = {  # what the provider (holder of the release key) could change -> check, field
    "claimed accuracy raised": (lambda p: p["claims"]["evaluation"].__setitem__("accuracy", 0.99),
                                "qualifying_data", "claims"),
    "event digest edited": (lambda p: p["evidence"]["event_log"][-1].__setitem__(
        "digest", flip(p["evidence"]["event_log"][-1]["digest"], 0)),
        "log_replay", "evidence.event_log[{last}].digest"),
    "report data flipped": (lambda p: p["evidence"].__setitem__(
        "quote", flip(p["evidence"]["quote"], 0x50)), "quote_signature", "evidence.signature"),
    "measurement flipped": (lambda p: p["evidence"].__setitem__(
        "quote", flip(p["evidence"]["quote"], 0x90)), "quote_signature", "evidence.signature"),
    "debug bit set": (lambda p: p["evidence"].__setitem__(
        "quote", flip(p["evidence"]["quote"], 0x0A)), "quote_signature", "evidence.signature"),
    "signature byte flipped": (lambda p: p["evidence"].__setitem__(
        "signature", flip(p["evidence"]["signature"], 1)), "quote_signature", "evidence.signature"),
    "VCEK dropped": (lambda p: p["evidence"].__setitem__(
        "cert_chain", p["evidence"]["cert_chain"][1:]), "cert_chain", "evidence.cert_chain[0]"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tamper_matrix_is_rejected(trained, name):
    root, out, release, _ = trained
    mutate, check, field = TAMPERS[name]
    payload = open_card((out / "card.cbor").read_bytes()).payload
    mutate(payload)
    field = field.format(last=len(payload["evidence"]["event_log"]) - 1)
    path = root / f"{name.replace(' ', '-')}.cbor"
    path.write_bytes(cose.sign1(cbor.dumps(payload), release, kid=keys.key_id(release.public_key())))
    code, result, bad = verify(trained, card=path)
    assert code == 1 and bad.get(check) == field, (name, bad)


@pytest.mark.slow
def test_verification_time_from_the_command_line(trained):
    root, out, _, env = trained
    base = ["verify", out / "card.cbor", "--model", out / "model.onnx",
            "--policy", root / "policy.yaml", "--json"]
    late = run(*base, "--at", "2099-01-01T00:00:00Z", env=env)
    assert late.returncode == 1
    chain = next(c for c in json.loads(late.stdout)["checks"] if c["check"] == "cert_chain")
    assert chain["status"] == "contraindicated" and "is not valid now" in chain["reason"]
    bad = run(*base, "--at", "yesterday", env=env)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
        "--at: expected an ISO 8601 time, got 'yesterday'")


@pytest.fixture(scope="module")
def trained_tdx(tmp_path_factory):
    pytest.importorskip("dcap_qvl")
    from tee_fake_tdx import FakeDcap
    from tee_vectors import VECTORS, case, hex_file
    c = case("intel", "phala_tdx_v4")
    raw = hex_file(c["quote"])
    dcap = FakeDcap(raw, json.loads((VECTORS / c["collateral"]).read_text()))
    root = tmp_path_factory.mktemp("tdxtrain")
    release = keys.generate_private_key("ed25519")
    keys.save_private_key(release, root / "release.pem")
    (root / "config.yaml").write_text(CONFIG)
    (root / "collateral.json").write_text(json.dumps(dcap.collateral()))
    out = root / "out"
    with FakeKernel(root / "tsm", provider="tdx_guest", tdx_quote=dcap.quote) as kernel:
        env = dict(os.environ, LAMINATE_TSM_REPORT=str(kernel.report_dir),
                   LAMINATE_TDX_COLLATERAL=str(root / "collateral.json"),
                   LAMINATE_HOME=str(root / "home"), OMP_NUM_THREADS="1")
        done = run("train", root / "config.yaml", "--out", out, "--backend", "tdx",
                   "--release-key", root / "release.pem", env=env)
        assert done.returncode == 0, done.stderr
    (root / "test-dcap-root.pem").write_bytes(dcap.root_pem)
    mrtd = raw[48 + 136:48 + 184].hex()
    (root / "policy.yaml").write_text(yaml.safe_dump({
        "policy_id": "tdx-acceptance", "allow_backends": ["tdx"],
        "trusted_roots": ["test-dcap-root.pem"], "verification_time": c["verify_at"],
        "trusted_release_keys": [str(out / "release-public.pem")],
        "reference_values": {"code": [measure.code_claim()["wrapper_sha256"]],
                             "tdx": {"mrtd": [mrtd]}}}))
    return root, out, release, env


@pytest.mark.slow
def test_tdx_card_verifies_under_a_policy_trusting_the_test_chain(trained_tdx):
    code, result, bad = verify(trained_tdx)
    assert code == 0 and not bad, result
    assert result["backend"] == "tdx"
    assert {"cert_chain", "collateral", "quote_signature", "tee_tcb", "tee_measurement",
            "tee_debug", "qualifying_data", "log_replay"} <= {
        c["check"] for c in result["checks"] if c["status"] == "affirming"}


@pytest.mark.slow
def test_tdx_default_policy_refuses_it(trained_tdx):
    code, _, bad = verify(trained_tdx, policy=False)
    assert code == 1 and {"backend", "release_signature"} <= set(bad)


TDX_TAMPERS = {
    "claimed accuracy raised": (lambda p: p["claims"]["evaluation"].__setitem__("accuracy", 0.99),
                                "qualifying_data", "claims"),
    "MRTD flipped": (lambda p: p["evidence"].__setitem__(
        "quote", flip(p["evidence"]["quote"], 48 + 136)), "quote_signature", "evidence.signature"),
    "collateral dropped": (lambda p: p["evidence"]["extra"].pop("collateral"),
                           "collateral", "evidence.extra.collateral"),
    "PCK certificate dropped": (lambda p: p["evidence"].__setitem__(
        "cert_chain", p["evidence"]["cert_chain"][1:]), "cert_chain", "evidence.cert_chain"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TDX_TAMPERS))
def test_tdx_tamper_matrix_is_rejected(trained_tdx, name):
    root, out, release, _ = trained_tdx
    mutate, check, field = TDX_TAMPERS[name]
    payload = open_card((out / "card.cbor").read_bytes()).payload
    mutate(payload)
    path = root / f"{name.replace(' ', '-')}.cbor"
    path.write_bytes(cose.sign1(cbor.dumps(payload), release, kid=keys.key_id(release.public_key())))
    code, result, bad = verify(trained_tdx, card=path)
    assert code == 1 and bad.get(check) == field, (name, bad)
