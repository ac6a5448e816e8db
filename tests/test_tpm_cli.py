"""`laminate tpm enroll|info` against a real swtpm, and the path a user follows: enroll by
the CLI, train with `--backend tpm`, verify under a policy trusting the two roots the
enrollment names (the swtpm CA for the EK, the registrar CA for the AK).

Also `attestation.tpm_pcrs`: checked in the config, forwarded to the TPM backend.
"""
import json
import os
import re
import stat

import pytest
import yaml

from swtpm import Swtpm, require_swtpm

require_swtpm()

from attest import measure  # noqa: E402
from attest.backend import open_backend  # noqa: E402
from attest.config import from_dict  # noqa: E402
from cards import cbor  # noqa: E402
from cards.card import open_card  # noqa: E402
from cards.errors import LaminateError  # noqa: E402
from test_tpm_train import CONFIG, run  # noqa: E402  (the same tiny training, same runner)
from verifier.tpm_trust import Registrar  # noqa: E402


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    root = tmp_path_factory.mktemp("tpmcli")
    with Swtpm(root / "tpm") as tpm:
        (root / "ek-root.pem").write_bytes(tpm.root_pem)
        (root / "ek-issuer.pem").write_bytes(tpm.issuer_pem)
        env = dict(os.environ, LAMINATE_TPM_DIR=str(root / "state"),
                   LAMINATE_HOME=str(root / "home"), OMP_NUM_THREADS="1")
        yield tpm, root, env


@pytest.fixture(scope="module")
def enrolled(tpm):
    """Enroll by the CLI; returns the registrar CA path it printed and its output."""
    swtpm, root, env = tpm
    done = run("tpm", "enroll", "--tpm", swtpm.tcti, "--registrar-dir", root / "registrar",
               "--ek-root", root / "ek-root.pem", "--ek-issuer", root / "ek-issuer.pem", env=env)
    assert done.returncode == 0, done.stderr
    ca = re.search(r"registrar CA created: (\S+)", done.stdout)
    assert ca, done.stdout
    return root / "registrar" / "registrar-ca.pem", done.stdout


def one_line_error(done, *needles):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("laminate: error:"), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_info_before_enrollment_shows_ek_and_ak(tpm):
    swtpm, root, _ = tpm
    env = dict(tpm[2], LAMINATE_TPM_DIR=str(root / "state-info"))
    done = run("tpm", "info", "--tpm", swtpm.tcti, env=env)
    assert done.returncode == 0, done.stderr
    assert "enrolled:        no" in done.stdout
    assert re.search(r"AK name:\s+000b[0-9a-f]{64}\n", done.stdout)   # sha256 nameAlg + digest
    issuer = re.search(r"issuer\s+(.+)", done.stdout).group(1)
    from cryptography import x509
    assert issuer == x509.load_pem_x509_certificate(swtpm.issuer_pem).subject.rfc4514_string()


def test_enroll_refuses_an_ek_under_an_untrusted_root(tpm):
    swtpm, root, env = tpm
    env = dict(env, LAMINATE_TPM_DIR=str(root / "state-untrusted"))
    stranger = root / "stranger-root.pem"
    stranger.write_bytes(Registrar.create([], name="some other manufacturer").ca_pem)
    done = run("tpm", "enroll", "--tpm", swtpm.tcti, "--registrar-dir", root / "reg-untrusted",
               "--ek-root", stranger, "--ek-issuer", root / "ek-issuer.pem", env=env)
    one_line_error(done, "EK certificate")
    assert not list((root / "state-untrusted").glob("ak-*.cbor"))
    assert not (root / "reg-untrusted" / "ek-roots.pem").exists()   # a failed enrollment remembers no root


@pytest.mark.parametrize("case", ["unreachable", "bad tcti", "missing pem", "no root"])
def test_user_mistakes_exit_2_with_one_line(tpm, case):
    swtpm, root, env = tpm
    env = dict(env, LAMINATE_TPM_DIR=str(root / "state-mistakes"))
    reg = root / f"reg-{case.replace(' ', '-')}"
    tcti, roots, needle = swtpm.tcti, ["--ek-root", root / "ek-root.pem"], ""
    if case == "unreachable":
        tcti, needle = "swtpm:host=127.0.0.1,port=1", "cannot open TPM"
    elif case == "bad tcti":
        tcti, needle = "nosuchtcti:whatever", "nosuchtcti"
    elif case == "missing pem":
        roots, needle = ["--ek-root", root / "absent.pem"], "absent.pem"
    else:
        roots, needle = [], "--ek-root"
    one_line_error(run("tpm", "enroll", "--tpm", tcti, "--registrar-dir", reg, *roots, env=env), needle)
    if case in ("unreachable", "bad tcti"):
        one_line_error(run("tpm", "info", "--tpm", tcti, env=env), needle)
    assert not list((root / "state-mistakes").glob("ak-*.cbor"))


def test_enroll_creates_a_private_registrar_ca_once(tpm, enrolled):
    swtpm, root, env = tpm
    ca_path, out = enrolled
    reg = root / "registrar"
    assert stat.S_IMODE((reg / "registrar-ca-key.pem").stat().st_mode) == 0o600
    assert str(ca_path.resolve()) in out and "trusted_roots" in out
    from cryptography import x509
    assert x509.load_pem_x509_certificate(swtpm.root_pem).subject.rfc4514_string() in out
    before = ca_path.read_bytes()
    again = run("tpm", "enroll", "--tpm", swtpm.tcti, "--registrar-dir", reg,
                "--ek-issuer", root / "ek-issuer.pem", env=env)   # the EK root is remembered
    assert again.returncode == 0, again.stderr
    assert "registrar CA reused" in again.stdout and ca_path.read_bytes() == before
    info = run("tpm", "info", "--tpm", swtpm.tcti, env=env)
    assert info.returncode == 0 and "enrolled:        yes" in info.stdout, info.stdout
    assert "laminate registrar CA" in info.stdout


@pytest.mark.slow
def test_card_after_cli_enrollment_verifies_under_ek_root_and_registrar_ca(tpm, enrolled):
    swtpm, root, env = tpm
    ca_path, _ = enrolled
    config = root / "tiny.yaml"
    config.write_text(CONFIG + "attestation: {tpm_pcrs: [16, 23]}\n")
    out = root / "out"
    done = run("train", config, "--out", out, "--backend", "tpm", "--tpm", swtpm.tcti,
               "--epochs", "1", env=env)
    assert done.returncode == 0, done.stderr
    evidence = open_card((out / "card.cbor").read_bytes()).evidence
    assert evidence["extra"]["pcr_map"] == [[16, 16], [23, 23]]

    def verify(*roots):
        policy = root / f"policy-{len(roots)}.yaml"
        policy.write_text(yaml.safe_dump({
            "policy_id": "cli-enrolled", "allow_backends": ["tpm"],
            "trusted_roots": [str(r) for r in roots],
            "trusted_release_keys": [str(out / "release-public.pem")],
            "reference_values": {"code": [measure.code_claim()["wrapper_sha256"]]}}))
        done = run("verify", out / "card.cbor", "--model", out / "model.onnx", "--json",
                   "--policy", policy, env=env)
        result = json.loads(done.stdout)
        return done.returncode, {c["check"] for c in result["checks"] if c["status"] == "contraindicated"}

    assert verify(root / "ek-root.pem", ca_path) == (0, set())
    code, bad = verify(root / "ek-root.pem")          # the registrar CA is what vouches for the AK
    assert code == 1 and "quote_signature" in bad


@pytest.mark.parametrize("pcrs, reason", [
    ([0, 23], "PCR 0 cannot be reset"),
    ([16, 17], "PCR 17 cannot be reset"),
    ([23, 16], "ascending"),
    ([16, 16], "distinct"),
    ([16], "two PCR numbers"),
    ("16,23", "two PCR numbers"),
])
def test_tpm_pcrs_config_errors_name_the_field(pcrs, reason):
    with pytest.raises(LaminateError) as info:
        from_dict({"dataset": {"name": "digits"}, "attestation": {"tpm_pcrs": pcrs}})
    assert "attestation.tpm_pcrs" in str(info.value) and reason in str(info.value)


def test_tpm_pcrs_default_is_left_out_of_the_measured_config():
    config = from_dict({"dataset": {"name": "digits"}})
    assert config["attestation"]["tpm_pcrs"] == [16, 23]
    assert config.measured()["attestation"] == {"backend": "sim"}


def test_cli_train_with_a_non_resettable_pcr_fails_before_touching_the_tpm(tpm):
    swtpm, root, env = tpm
    config = root / "bad-pcrs.yaml"
    config.write_text(CONFIG + "attestation: {tpm_pcrs: [10, 23]}\n")
    done = run("train", config, "--out", root / "never", "--backend", "tpm", "--tpm", swtpm.tcti, env=env)
    one_line_error(done, "attestation.tpm_pcrs", "PCR 10")
    assert not (root / "never").exists()


def test_open_backend_forwards_the_pcr_mapping(tpm):
    swtpm, root, _ = tpm
    backend = open_backend("tpm", tcti=swtpm.tcti, pcrs=[16, 23])
    try:
        assert backend.pcr_map == {16: 16, 23: 23}
    finally:
        backend.close()
    with pytest.raises(LaminateError, match="tpm_pcrs"):      # the backend's own check saw it
        open_backend("tpm", tcti=swtpm.tcti, pcrs=[23, 16])


def test_enrollment_record_names_the_ek_issuer_the_cards_carry(tpm, enrolled):
    swtpm, root, _ = tpm
    from swtpm import issuer_der
    record = cbor.loads(next((root / "state").glob("ak-*.cbor")).read_bytes())
    assert record["method"] == "credential-activation"
    assert record["ek_issuers"] == [issuer_der(swtpm)]
