"""Train through the wrapper, then verify what it sealed: the card verifies against a
policy that trusts this run, its claims match a re-measurement, and changing any
measured claim (even re-signed with the release key) or the model file is rejected."""
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cards import card as cardlib
from cards import keys
from cards.errors import LaminateError
from cards.watermark import Opening
from enclave_sim.device import SimDevice

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

CONFIG = {
    "name": "tiny-digits",
    "dataset": {"name": "digits"},
    "model": {"hidden": [32]},
    "training": {"epochs": 2, "optimizer": "adam", "lr": 0.01, "seed": 1},
    "dp": {"enabled": True, "noise_multiplier": 1.0},
    "watermark": {"enabled": True, "trigger_count": 40, "schedule": "split", "split_epochs": 2},
}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("laminate")
    mp = pytest.MonkeyPatch()
    mp.setenv("LAMINATE_HOME", str(root / "home"))
    mp.setenv("LAMINATE_SIM_DIR", str(root / "sim"))
    yield root
    mp.undo()


def write_config(directory: Path, data: dict) -> Path:
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def trained(home):
    from attest.train import train_from_config

    lines = []
    result = train_from_config(write_config(home, CONFIG), home / "out", progress=lines.append)
    return result, lines


def policy_for(result, **extra):
    from verifier.policy import Policy

    card = cardlib.open_card(result.card_bytes)
    return Policy.from_mapping({
        "policy_id": "e2e",
        "allow_backends": ["sim"],
        "trusted_roots": [SimDevice().root_certificate_pem().decode()],
        "trusted_release_keys": [(result.out_dir / "release-public.pem").read_text()],
        "reference_values": {"code": [card.claims["training"]["code"]["wrapper_sha256"]]},
        **extra})


@pytest.mark.slow
def test_outputs_and_progress(trained):
    result, lines = trained
    out = result.out_dir
    for name in ("model.onnx", "card.cbor", "card.yaml", "card.md", "watermark.opening", "release-public.pem"):
        assert (out / name).is_file(), name
    assert (out / "watermark.opening").stat().st_mode & 0o777 == 0o600
    assert "SIMULATED HARDWARE" in (out / "card.md").read_text()
    assert [line for line in lines if line.startswith("[dp] epoch")][-1].count("epsilon") == 1
    assert any(line.startswith("[watermark] epoch 2/2") for line in lines)
    assert (out / "card.cbor").read_bytes() == result.card_bytes


@pytest.mark.slow
def test_claims_match_a_remeasurement(trained):
    from attest import datasets as ds
    from attest.measure import dataset_claim
    from verifier.suspect import OnnxSuspect

    result, _ = trained
    claims = result.claims
    out = result.out_dir
    assert claims["model"]["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    train, test = ds.split(ds.load_digits(), 0.2, 0)
    assert claims["dataset"]["test"]["merkle_root"] == dataset_claim("t", test.records(), 10)["merkle_root"]
    assert claims["dataset"]["train"]["records"] == len(train) == 1438
    config = claims["training"]["config"]
    assert config["training"]["epochs"] == 2 and "release_key" not in config
    dp = claims["defenses"]["dp"]
    assert dp["privacy_accounting"] == "not tight" and dp["steps"] == 2 * 23 and dp["noise_multiplier"] == 1.0
    # The opening opens the card's commitment and its triggers give the claimed accuracy.
    opening = Opening.load(out / "watermark.opening")
    assert opening.matches(claims["defenses"]["watermark"]["commitment"])
    x, y = opening.triggers()
    suspect = OnnxSuspect(out / "model.onnx")
    assert np.mean(suspect.predict(x) == y) == claims["evaluation"]["watermark_accuracy"]
    assert np.mean(suspect.predict(test.x) == test.y) == pytest.approx(claims["evaluation"]["accuracy"])
    assert claims["evaluation"]["accuracy"] > 0.5


@pytest.mark.slow
def test_card_verifies_against_a_policy_trusting_this_run(trained):
    from verifier.appraise import appraise

    result, _ = trained
    verdict = appraise(result.card_bytes, policy=policy_for(result, require=["defenses.dp.epsilon <= 50"]),
                       model_path=result.model_path)
    statuses = {c.check: c.status for c in verdict.checks}
    assert verdict.exit_code == 0 and verdict.tier == 32, verdict.to_table()
    for check in ("release_signature", "cert_chain", "quote_signature", "qualifying_data", "log_replay",
                  "claims_in_log", "code_identity", "model_digest", "dp_epsilon"):
        assert statuses[check] == "affirming", (check, verdict.to_table())
    assert statuses["privacy_accounting"] == "warning" and statuses["simulated_hardware"] == "warning"


def resealed(result, edit) -> bytes:
    """The card with one claim changed and re-signed with the real release key: the
    strongest forger (the provider) still cannot change what the quote covers."""
    card = cardlib.open_card(result.card_bytes)
    claims = card.claims
    edit(claims)
    key = keys.load_private_key(Path(result.out_dir).parent / "home" / "release-ed25519.pem")
    return cardlib.seal(claims, card.evidence, key)


@pytest.mark.slow
@pytest.mark.parametrize("edit", [
    lambda c: c["evaluation"].__setitem__("accuracy", 0.999),
    lambda c: c["defenses"]["dp"].__setitem__("epsilon", 0.5),
    lambda c: c["dataset"]["train"].__setitem__("merkle_root", "00" * 32),
    lambda c: c["evaluation"].__setitem__("watermark_accuracy", 1.0),
], ids=["accuracy", "epsilon", "dataset_root", "watermark_accuracy"])
def test_tampered_claims_are_contraindicated(trained, edit):
    from verifier.appraise import appraise

    result, _ = trained
    verdict = appraise(resealed(result, edit), policy=policy_for(result), model_path=result.model_path)
    statuses = {c.check: c.status for c in verdict.checks}
    assert verdict.exit_code == 1 and verdict.tier == 96
    assert statuses["qualifying_data"] == "contraindicated", verdict.to_table()
    assert statuses["release_signature"] == "affirming"


@pytest.mark.slow
def test_swapped_model_file_is_contraindicated(trained, tmp_path):
    from verifier.appraise import appraise

    result, _ = trained
    other = tmp_path / "model.onnx"
    data = bytearray(result.model_path.read_bytes())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    verdict = appraise(result.card_bytes, policy=policy_for(result), model_path=other)
    assert verdict.exit_code == 1
    assert {c.check: c.status for c in verdict.checks}["model_digest"] == "contraindicated"


@pytest.mark.slow
def test_api_trains_a_torch_dataset_and_measures_the_entry_point(home, tmp_path):
    from attest.train import train

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(120, 6, generator=gen)
    y = (x[:, 0] > 0.5).long()
    data = torch.utils.data.TensorDataset(x, y)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    result = train(model, torch.utils.data.Subset(data, range(90)), torch.utils.data.Subset(data, range(90, 120)),
                   {"name": "api", "dataset": {"name": "synthetic"}, "training": {"epochs": 2}},
                   out_dir=tmp_path / "api", entry_point=__file__, progress=lambda line: None)
    code = result.claims["training"]["code"]
    assert code["entry_point"]["sha256"] == hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    assert result.claims["dataset"]["train"]["records"] == 90
    assert result.claims["dataset"]["test"]["schema"] == {"features": [6], "dtype": "float32", "classes": 2}
    assert result.claims["defenses"] == {"dp": None, "watermark": None}
    assert result.opening_path is None and result.claims["evaluation"]["watermark_accuracy"] is None


@pytest.mark.slow
def test_same_seed_same_model(home, tmp_path):
    """The initial weights come from the attestation module: the same config seed and the
    same session randomness give the same model; fresh randomness gives another start."""
    from attest.backend import open_backend
    from attest.train import train_from_config

    config = {**CONFIG, "watermark": {"enabled": False}, "training": {**CONFIG["training"], "epochs": 1}}
    path = write_config(tmp_path, config)

    def run(name, seed):
        backend = open_backend("sim", sim_dir=tmp_path / "sim", sim_random_seed=seed)
        try:
            return train_from_config(path, tmp_path / name, backend=backend, progress=lambda line: None)
        finally:
            backend.close()
    a, b, c = run("a", b"same"), run("b", b"same"), run("c", b"other")
    assert a.claims["start"] == b.claims["start"] and a.claims["start"]["kind"] == "random"
    assert a.claims["model"]["sha256"] == b.claims["model"]["sha256"]
    assert c.claims["start"]["seed"] != a.claims["start"]["seed"]
    assert c.claims["model"]["sha256"] != a.claims["model"]["sha256"]
    assert a.claims["training"]["config_sha256"] == b.claims["training"]["config_sha256"]


def test_bad_data_fails_before_training_with_the_field_named(home, tmp_path):
    from attest.train import train_from_config

    (tmp_path / "d.csv").write_text("a,label\n0.1,0\n0.2,1\n0.3,5\n")
    path = write_config(tmp_path, {"dataset": {"name": "d.csv", "classes": 3}})
    with pytest.raises(LaminateError, match="dataset.classes"):
        train_from_config(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_errors_exit_2_and_train_command_does_not_import_torch_at_load(home, tmp_path, capsys):
    from laminate.cli import main

    path = write_config(tmp_path, {"dataset": {"name": "digits"}, "training": {"epochs": "many"}})
    assert main(["train", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "training.epochs" in capsys.readouterr().err
    probe = "import sys, attest.commands; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_sim_init_and_info(tmp_path, capsys):
    from laminate.cli import main

    state = tmp_path / "device"
    assert main(["sim", "info", "--dir", str(state)]) == 2
    assert "laminate sim init" in capsys.readouterr().err
    assert main(["sim", "init", "--dir", str(state), "--root-out", str(tmp_path / "root.pem")]) == 0
    out = capsys.readouterr().out
    device = SimDevice(state)
    assert "created" in out and device.device_id in out and "SIMULATED hardware" in out
    assert (tmp_path / "root.pem").read_bytes() == device.root_certificate_pem()
    assert main(["sim", "info", "--dir", str(state)]) == 0
    assert "already" not in capsys.readouterr().out
    assert main(["sim", "init", "--dir", str(state)]) == 0
    assert "already existed" in capsys.readouterr().out


@pytest.mark.slow
def test_training_on_a_software_tpm_verifies(tmp_path):
    """The same wrapper on a real TPM 2.0 stack (swtpm): evidence is a TPM quote."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import swtpm

    swtpm.require_swtpm()
    from attest.train import train
    from verifier.appraise import appraise
    from verifier.tpm_trust import Registrar

    with swtpm.Swtpm(tmp_path / "tpm") as tpm:
        registrar = Registrar.create([tpm.root_pem])
        backend = swtpm.enrolled_backend(tpm, registrar, tmp_path / "state")
        try:
            x = np.random.default_rng(0).random((80, 4)).astype(np.float32)
            y = (x[:, 0] > 0.5).astype(np.int64)
            key = keys.generate_private_key()
            model = torch.nn.Sequential(torch.nn.Linear(4, 2))
            result = train(model, (x[:60], y[:60]), (x[60:], y[60:]),
                           {"training": {"epochs": 1}, "attestation": {"backend": "tpm", "tpm": tpm.tcti}},
                           out_dir=tmp_path / "out", backend=backend, release_key=key,
                           progress=lambda line: None, start="random")
        finally:
            backend.close()
        card = cardlib.open_card(result.card_bytes)
        assert card.backend == "tpm" and not card.simulated
        policy = swtpm.trusting_policy(
            tpm, registrar, trusted_release_keys=[keys.public_pem(key).decode()],
            reference_values={"code": [card.claims["training"]["code"]["wrapper_sha256"]]})
        verdict = appraise(result.card_bytes, policy=policy, model_path=result.model_path)
        assert verdict.exit_code == 0 and verdict.status == "affirming", verdict.to_table()
