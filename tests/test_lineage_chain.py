"""`laminate verify --chain`: a fine-tuned model's card is appraised with each card it
was fine-tuned from, found by digest, and a broken link is refused for its reason."""
import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from cardkit import make_card
from laminate.cli import main


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    return make_card(tmp_path_factory.mktemp("parent"), start=None)


def _child(tmp_path, parent, **start):
    claim = {"kind": "parent", "card_sha256": _sha(parent.card_bytes),
             "model_sha256": parent.claims["model"]["sha256"], "sha256": _sha(b"w"), **start}
    # DP accounting from a parent start is not tight (a check of its own says so).
    return make_card(tmp_path / "child", start=claim,
                     dp={"privacy_accounting": "not tight", "note": "parent start"})


def _policy(tmp_path, *kits) -> Path:
    """One deployer policy that trusts both kits' keys and simulator roots."""
    doc = {"policy_id": "chain", "allow_backends": ["sim"],
           "trusted_roots": [str(k.root_pem_path) for k in kits],
           "trusted_release_keys": [str(k.release_public_pem_path) for k in kits],
           "reference_values": {"code": sorted({k.code_sha256 for k in kits})},
           "require_start": ["random", "parent"]}
    path = tmp_path / "chain-policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _verify(capsys, child, policy, *chain):
    code = main(["verify", str(child.card_path), "--model", str(child.model_path),
                 "--policy", str(policy), "--json", "--chain", *map(str, chain)])
    return code, json.loads(capsys.readouterr().out)


def _lineage(link):
    return next(c for c in link["result"]["checks"] if c["check"] == "lineage")


def test_a_two_link_chain_verifies_link_by_link(tmp_path, parent, capsys):
    child = _child(tmp_path, parent)
    code, report = _verify(capsys, child, _policy(tmp_path, parent, child), parent.tmp_path)
    links = report["links"]
    assert code == 0 and report["status"] in ("affirming", "warning")
    assert [link["sha256"] for link in links] == [_sha(child.card_bytes), _sha(parent.card_bytes)]
    assert _lineage(links[0])["status"] == "affirming"
    assert all(link["result"]["status"] != "contraindicated" for link in links)
    assert not any(c["check"] == "lineage" for c in links[1]["result"]["checks"])  # the root


def test_an_altered_parent_card_is_refused_for_its_digest(tmp_path, parent, capsys):
    from cardkit import forge
    child = _child(tmp_path, parent)
    altered = tmp_path / "parent-altered.cbor"
    altered.write_bytes(forge(parent, mutate_claims=lambda c: c["evaluation"].__setitem__(
        "accuracy", 0.99)))
    code, report = _verify(capsys, child, _policy(tmp_path, parent, child), altered)
    check = _lineage(report["links"][0])
    assert code == 1 and len(report["links"]) == 1
    assert check["status"] == "contraindicated" and check["field"] == "claims.start.card_sha256"
    assert "altered" in check["reason"] and "parent-altered.cbor" in check["reason"]


def test_a_parent_card_of_another_model_is_refused(tmp_path, parent, capsys):
    child = _child(tmp_path, parent, model_sha256=_sha(b"another model"))
    code, report = _verify(capsys, child, _policy(tmp_path, parent, child), parent.card_path)
    check = _lineage(report["links"][0])
    assert code == 1
    assert check["status"] == "contraindicated" and check["field"] == "claims.start.model_sha256"
    assert "describes model" in check["reason"]


def test_a_parent_digest_no_given_card_has_is_refused(tmp_path, parent, capsys):
    child = _child(tmp_path, parent, card_sha256=_sha(b"no such card"),
                   model_sha256=_sha(b"no such model"))
    code, report = _verify(capsys, child, _policy(tmp_path, parent, child), parent.card_path)
    check = _lineage(report["links"][0])
    assert code == 1 and check["field"] == "claims.start.card_sha256"
    assert "not among the cards given" in check["reason"]


def test_a_parent_that_fails_the_policy_fails_the_chain(tmp_path, parent, capsys):
    """Each link is appraised: a parent signed by a key the policy does not trust fails."""
    child = _child(tmp_path, parent)
    code, report = _verify(capsys, child, _policy(tmp_path, child), parent.card_path)
    assert code == 1 and _lineage(report["links"][0])["status"] == "affirming"
    assert report["links"][1]["result"]["status"] == "contraindicated"


def test_chain_input_errors_are_one_line(tmp_path, parent, capsys):
    child = _child(tmp_path, parent)
    code = main(["verify", str(child.card_path), "--policy", str(child.policy_path),
                 "--chain", str(tmp_path / "missing.cbor")])
    err = capsys.readouterr().err
    assert code == 2 and "card file not found" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_fine_tune_of_a_released_digits_model_verifies_as_a_chain(tmp_path, capsys):
    """Train on digits for one epoch, fine-tune that released model for one more through
    the wrapper, and verify the fine-tune with its parent as a chain."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from attest import datasets as ds
    from attest.backend import open_backend
    from attest.models import build
    from attest.train import train
    from cards import keys
    from enclave_sim.device import SimDevice

    train_set, test_set = ds.split(ds.load_digits(), 0.2, 0)
    key = keys.generate_private_key()
    config = {"name": "digits", "dataset": {"name": "digits", "classes": 10},
              "model": {"arch": "mlp", "hidden": [16]},
              "training": {"epochs": 1, "batch_size": 64, "lr": 0.01, "optimizer": "adam"},
              "attestation": {"backend": "sim"}}

    def run(model, name, **start):
        backend = open_backend("sim", sim_dir=tmp_path / "sim")
        try:
            return train(model, train_set, test_set, config, out_dir=tmp_path / name,
                         backend=backend, release_key=key, progress=lambda line: None, **start)
        finally:
            backend.close()

    model = build("mlp", (8, 8), 10, [16])
    first = run(model, "released", start="random")
    tuned = run(copy.deepcopy(model), "fine-tuned", parent_card=first.card_path)
    assert tuned.claims["start"]["card_sha256"] == _sha(first.card_bytes)
    (tmp_path / "release.pub.pem").write_bytes(keys.public_pem(key))
    (tmp_path / "root.pem").write_bytes(SimDevice(tmp_path / "sim").root_certificate_pem())
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "policy_id": "chain", "allow_backends": ["sim"], "trusted_roots": ["root.pem"],
        "trusted_release_keys": ["release.pub.pem"],
        "reference_values": {"code": [tuned.claims["training"]["code"]["wrapper_sha256"]]},
        "require_start": ["random", "parent"]}))
    code = main(["verify", str(tuned.card_path), "--model", str(tuned.model_path),
                 "--policy", str(policy), "--json", "--chain", str(tmp_path / "released")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, json.dumps(report, indent=1)
    assert [link["sha256"] for link in report["links"]] == [_sha(tuned.card_bytes),
                                                            _sha(first.card_bytes)]
    assert _lineage(report["links"][0])["status"] == "affirming"
