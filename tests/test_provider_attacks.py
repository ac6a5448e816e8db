"""A dishonest provider and a laundering thief, through the real wrapper on digits.

(a) Weights pre-trained without DP on train *and test*, then one DP epoch: the card must
    say the start was external, the DP claim must not call itself tight, and a policy
    requiring an attested start or tight accounting refuses it.
(b) A thief loads the victim's weights and "trains" them at lr 1e-300: the export is
    byte-identical, so the thief holds a genuine card for the victim's exact file. The
    card must say its start was external, with the victim model's digest, and in a
    dispute it must not beat the owner even when registered first.
(c) An entry script patches Opacus's noise in process: the card records the script's
    digest and the libraries' RECORD digests, so a policy pinning the entry point refuses
    it; the libraries' RECORDs are unchanged (an in-process patch writes no file).
"""
import copy
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from attest import datasets as ds  # noqa: E402
from attest.backend import open_backend  # noqa: E402
from attest.measure import library_claim, state_dict_sha256  # noqa: E402
from attest.models import build  # noqa: E402
from attest.train import train  # noqa: E402
from cards import keys  # noqa: E402
from cards.card import open_card  # noqa: E402
from cards.watermark import Opening  # noqa: E402
from enclave_sim.device import SimDevice  # noqa: E402
from verifier.appraise import appraise  # noqa: E402
from verifier.policy import Policy  # noqa: E402
from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("attacks")
    data = ds.split(ds.load_digits(), 0.2, 0)
    key = keys.generate_private_key()
    keys.save_private_key(key, base / "release.pem")
    return {"base": base, "data": data, "key": key, "sim": base / "sim"}


def _config(**sections):
    config = {"name": "digits", "dataset": {"name": "digits", "classes": 10},
              "model": {"arch": "mlp", "hidden": [32]},
              "training": {"epochs": 1, "batch_size": 64, "lr": 0.01, "optimizer": "adam"},
              "attestation": {"backend": "sim"}}
    config.update(sections)
    return config


def _train(env, model, name, config, **kwargs):
    backend = open_backend("sim", sim_dir=env["sim"])
    try:
        train_set, test_set = env["data"]
        return train(model, train_set, test_set, config, out_dir=env["base"] / name,
                     backend=backend, release_key=env["key"], progress=lambda line: None,
                     **kwargs)
    finally:
        backend.close()


def _policy(env, results, **extra):
    """The deployer's policy: key, simulator root and wrapper code pinned."""
    doc = {"policy_id": "deployer", "allow_backends": ["sim"],
           "trusted_roots": [SimDevice(env["sim"]).root_certificate_pem().decode()],
           "trusted_release_keys": [keys.public_pem(env["key"]).decode()],
           "reference_values": {"code": sorted({r.claims["training"]["code"]["wrapper_sha256"]
                                                for r in results})},
           "require": ["defenses.dp.epsilon <= 5"], **extra}
    return Policy.from_mapping(doc, source="deployer")


def _fresh(seed=0):
    torch.manual_seed(seed)
    return build("mlp", (8, 8), 10, [32])


def test_a_non_dp_pretraining_on_train_and_test_is_an_external_start(env):
    train_set, test_set = env["data"]
    model = _fresh()
    x = torch.from_numpy(np.concatenate([train_set.x, test_set.x]))
    y = torch.from_numpy(np.concatenate([train_set.y, test_set.y]))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):                                   # no DP, test split included
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    pretrained = state_dict_sha256(model.state_dict())
    dp = {"enabled": True, "target_epsilon": 0.5}
    result = _train(env, copy.deepcopy(model), "pretrained", _config(dp=dp))
    start, claim = result.claims["start"], result.claims["defenses"]["dp"]
    assert start["kind"] == "external" and start["sha256"] == pretrained
    assert claim["privacy_accounting"] == "not tight" and "external weights" in claim["note"]
    assert claim["epsilon"] <= 0.5

    said = appraise(result.card_bytes, policy=_policy(env, [result]), model_path=result.model_path)
    assert said.get("start").status == WARNING and "handed in from outside" in said.get("start").reason
    assert said.get("privacy_accounting").status == WARNING
    strict = _policy(env, [result], require_start=["random", "parent"], dp={"require_tight": True})
    refused = appraise(result.card_bytes, policy=strict, model_path=result.model_path)
    assert refused.exit_code == 1
    assert refused.get("start").status == CONTRAINDICATED
    assert refused.get("start").field == "claims.start.kind"
    assert refused.get("privacy_accounting").status == CONTRAINDICATED
    assert "external weights" in refused.get("privacy_accounting").reason

    # The same pre-trained model with an attested start: the wrapper re-draws every weight
    # from the session's randomness, so the pre-training is gone and the card is tight.
    honest = _train(env, copy.deepcopy(model), "random-start", _config(dp=dp), start="random")
    start = honest.claims["start"]
    assert start["kind"] == "random" and start["sha256"] != pretrained and len(start["seed"]) == 64
    assert honest.claims["defenses"]["dp"]["privacy_accounting"] == "tight"
    ok = appraise(honest.card_bytes, policy=_policy(env, [honest], require_start=["random", "parent"],
                                                    dp={"require_tight": True}),
                  model_path=honest.model_path)
    assert not ok.failed() and ok.get("start").status == AFFIRMING, ok.to_table()


def test_random_start_seeds_differ_per_session(env):
    first = _train(env, _fresh(), "seed-1", _config(), start="random")
    second = _train(env, _fresh(), "seed-2", _config(), start="random")
    assert first.claims["start"]["seed"] != second.claims["start"]["seed"]
    assert first.claims["start"]["sha256"] != second.claims["start"]["sha256"]


def test_b_laundering_thief_is_external_and_loses_the_dispute_even_registered_first(env):
    from redteam import accusers as acc

    victim_model = _fresh(1)
    watermark = {"enabled": True, "trigger_count": 100, "schedule": "joint"}
    victim = _train(env, victim_model, "victim",
                    _config(training={"epochs": 12, "batch_size": 64, "lr": 0.01, "optimizer": "adam"},
                            watermark=watermark), start="random")
    stolen = copy.deepcopy(victim_model)                  # the thief holds the victim's weights
    thief = _train(env, stolen, "thief",
                   _config(training={"epochs": 1, "batch_size": 64, "lr": 1e-300, "optimizer": "adam"},
                           watermark=watermark))
    victim_bytes = victim.model_path.read_bytes()
    assert thief.model_path.read_bytes() == victim_bytes      # the laundered file is identical
    digest = hashlib.sha256(victim_bytes).hexdigest()
    start = thief.claims["start"]
    assert start["kind"] == "external" and start["model_sha256"] == digest
    assert thief.claims["model"]["sha256"] == digest

    policy = _policy(env, [victim, thief], require=[])
    assert appraise(thief.card_bytes, policy=policy).get("start").status == WARNING
    attested = _policy(env, [victim, thief], require=[], require_start=["random", "parent"])
    assert appraise(thief.card_bytes, policy=attested).get("start").status == CONTRAINDICATED

    # The thief registers first; the owner's commitment is logged after the model's first
    # appearance. Both claim the victim's model.
    log = acc.DisputeLog()
    log.register_card(thief.claims["defenses"]["watermark"]["commitment"], digest)
    log.register_card(victim.claims["defenses"]["watermark"]["commitment"], digest)
    owner_claim = acc.Claim("owner", "owner", victim.card_bytes, Opening.load(victim.opening_path))
    thief_claim = acc.Claim("laundering", "thief", thief.card_bytes, Opening.load(thief.opening_path))
    owner, thief_j = acc.dispute([owner_claim, thief_claim], victim.model_path, digest, log,
                                 policy, alpha=1e-6)
    assert not thief_j.won and not thief_j.checks["start"][0]
    assert "is the suspect model itself" in thief_j.checks["start"][1]
    assert owner.won, owner.reason
    assert "trained exactly the suspect's bytes" in owner.checks["order"][1]


HONEST_SCRIPT = """\
import sys
from attest import datasets as ds
from attest.models import build
from attest.train import train
import torch
{patch}
train_set, test_set = ds.split(ds.load_digits(), 0.2, 0)
config = {{"name": "digits", "dataset": {{"name": "digits", "classes": 10}},
          "model": {{"arch": "mlp", "hidden": [16]}}, "training": {{"epochs": 1}},
          "dp": {{"enabled": True, "noise_multiplier": 1.0}},
          "attestation": {{"backend": "sim", "sim_dir": sys.argv[2]}},
          "release_key": sys.argv[3]}}
train(build("mlp", (8, 8), 10, [16]), train_set, test_set, config, out_dir=sys.argv[1],
      progress=lambda line: None, start="random")
"""
PATCH = """\
import opacus.optimizers.optimizer as _opt
_opt._generate_noise = lambda std, reference, generator=None, secure_mode=False: torch.zeros_like(reference)
"""


def _run_script(env, name, patch):
    script = env["base"] / f"{name}.py"
    script.write_text(HONEST_SCRIPT.format(patch=patch))
    out = env["base"] / name
    proc = subprocess.run([sys.executable, str(script), str(out), str(env["sim"]),
                           str(env["base"] / "release.pem")], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=env["base"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return script, out, open_card((out / "card.cbor").read_bytes())


def test_c_entry_script_patching_opacus_noise_is_pinned_out(env):
    honest_script, _, honest = _run_script(env, "train_honest", "")
    patched_script, out, patched = _run_script(env, "train_patched", PATCH)
    entry = patched.claims["training"]["code"]["entry_point"]
    assert entry == {"path": "train_patched.py",
                     "sha256": hashlib.sha256(patched_script.read_bytes()).hexdigest()}
    # What an in-process patch leaves: every library's RECORD as installed, no file changed.
    libraries = patched.claims["training"]["code"]["libraries"]
    assert set(libraries) >= {"torch", "opacus", "onnx", "onnxruntime", "numpy"}
    assert libraries == library_claim() == honest.claims["training"]["code"]["libraries"]
    assert all(not lib["modified"] for lib in libraries.values())

    code = honest.claims["training"]["code"]
    pinned = Policy.from_mapping({
        "policy_id": "pinned", "allow_backends": ["sim"],
        "trusted_roots": [SimDevice(env["sim"]).root_certificate_pem().decode()],
        "trusted_release_keys": [keys.public_pem(env["key"]).decode()],
        "reference_values": {"code": [code["wrapper_sha256"]],
                             "entry_point": [code["entry_point"]["sha256"]],
                             "libraries": {n: [lib["record_sha256"]] for n, lib in libraries.items()}},
        "require_entry_point": True}, source="pinned")
    ok = appraise((env["base"] / "train_honest" / "card.cbor").read_bytes(), policy=pinned)
    assert ok.get("entry_point").status == AFFIRMING and not ok.failed(), ok.to_table()
    refused = appraise((out / "card.cbor").read_bytes(), policy=pinned)
    assert refused.get("entry_point").status == CONTRAINDICATED
    assert refused.get("entry_point").field == "claims.training.code.entry_point.sha256"
    assert refused.get("libraries").status == AFFIRMING   # the honest limit of RECORD digests
    assert [c.check for c in refused.failed()] == ["entry_point"]


def test_library_patched_on_disk_is_listed_as_modified(tmp_path):
    """A library edited on disk no longer matches the hashes its RECORD lists."""
    import importlib.metadata

    from attest.measure import _record_mismatches

    site = tmp_path / "site"
    (site / "fakelib").mkdir(parents=True)
    body = b"def noise():\n    return 1.0\n"
    (site / "fakelib" / "__init__.py").write_bytes(body)
    info = site / "fakelib-1.0.dist-info"
    info.mkdir()
    import base64
    listed = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
    record = f"fakelib/__init__.py,sha256={listed},{len(body)}\nfakelib-1.0.dist-info/RECORD,,\n"
    (info / "RECORD").write_text(record)
    (info / "METADATA").write_text("Name: fakelib\nVersion: 1.0\n")
    dist = importlib.metadata.PathDistribution(info)
    assert _record_mismatches(dist, record) == []
    (site / "fakelib" / "__init__.py").write_bytes(b"def noise():\n    return 0.0\n")
    assert _record_mismatches(dist, record) == ["fakelib/__init__.py"]


def test_parent_start_must_match_the_parent_card(env):
    from cards.errors import LaminateError

    parent_model = _fresh(2)
    parent = _train(env, parent_model, "parent", _config(), start="random")
    child = _train(env, copy.deepcopy(parent_model), "child", _config(),
                   parent_card=parent.card_path)
    start = child.claims["start"]
    assert start["kind"] == "parent"
    assert start["card_sha256"] == hashlib.sha256(parent.card_bytes).hexdigest()
    assert start["model_sha256"] == parent.claims["model"]["sha256"]
    with pytest.raises(LaminateError, match="the parent card's model is"):
        _train(env, _fresh(3), "not-the-child", _config(), parent_card=parent.card_path)


def test_config_weights_file_is_an_external_start(tmp_path):
    from attest.train import train_from_config

    weights = tmp_path / "weights.pt"
    model = build("mlp", (8, 8), 10, [8])
    torch.save(model.state_dict(), weights)
    config = {"name": "w", "dataset": {"name": "digits"}, "model": {"hidden": [8], "weights": "weights.pt"},
              "training": {"epochs": 1}, "attestation": {"backend": "sim", "sim_dir": str(tmp_path / "sim")},
              "release_key": None}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    key = keys.generate_private_key()
    result = train_from_config(tmp_path / "config.yaml", tmp_path / "out", release_key=key,
                               progress=lambda line: None)
    assert result.claims["start"]["kind"] == "external"
    assert result.claims["start"]["sha256"] == state_dict_sha256(model.state_dict())
    assert "weights" not in result.claims["training"]["config"]["model"]   # host-local path


@pytest.mark.parametrize("kwargs,message", [
    ({"start": "pretrained"}, "start: expected one of random, parent, external"),
    ({"start": "random", "parent_card": b"card"}, "a parent start needs the parent's card, and only it"),
    ({"start": "parent"}, "a parent start needs the parent's card, and only it"),
])
def test_a_bad_start_is_refused_before_anything_is_measured(env, kwargs, message):
    from cards.errors import LaminateError

    with pytest.raises(LaminateError, match=message):
        train(_fresh(), *env["data"], _config(), out_dir=env["base"] / "bad", release_key=env["key"],
              progress=lambda line: pytest.fail(line), **kwargs)
