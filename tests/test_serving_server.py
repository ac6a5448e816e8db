"""serve-model: only the carded model, authenticated clients, private append-only logs."""
import sqlite3

import numpy as np
import pytest

import serving_kit as sk
from cards.errors import LaminateError
from laminate.cli import main
from serving import deploy
from verifier import dawn


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return sk.serve(tmp_path_factory.mktemp("server"), rate=0.1)


def headers(client):
    return {"Authorization": f"Bearer {sk.TOKENS[client]}"}


def test_a_model_the_card_does_not_measure_is_refused(served, tmp_path):
    other = sk.export(sk.fit(*sk.split()[2], hidden=64, seed=5), tmp_path / "other.onnx")
    with pytest.raises(LaminateError, match=r"claims\.model\.sha256.*refusing to serve"):
        deploy.start(served.kit.card_path, other, served.kit.private_key, sim_dir=tmp_path / "sim")


def test_serve_model_refuses_it_with_one_line_and_exit_2(served, tmp_path, capsys):
    other = sk.export(sk.fit(*sk.split()[2], hidden=64, seed=5), tmp_path / "other.onnx")
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{c} {t}\n" for c, t in sk.TOKENS.items()))
    code = main(["serve-model", "--card", str(served.kit.card_path), "--model", str(other),
                 "--release-key", str(served.kit.tmp_path / "release.key"), "--tokens", str(tokens),
                 "--state", str(tmp_path / "state"), "--sim-dir", str(tmp_path / "sim")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "other.onnx" in err[0] and "claims.model.sha256" in err[0]


def test_serve_model_prepares_a_deployment(served, tmp_path):
    import argparse

    from serving.cli import prepare

    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-0123456789\n")
    args = argparse.Namespace(card=served.kit.card_path, model=served.kit.model_path,
                              release_key=served.kit.tmp_path / "release.key", tokens=tokens,
                              state=tmp_path / "state", dawn=0.05, probabilities=False,
                              backend="sim", sim_dir=served.kit.tmp_path / "sim", tpm=None)
    _, deployment = prepare(args)
    assert (tmp_path / "state" / "serving-card.cbor").read_bytes() == deployment.card_bytes
    assert (tmp_path / "state" / "dawn.opening.json").stat().st_mode & 0o077 == 0
    assert deployment.card.dawn["rate"] == 0.05
    with pytest.raises(LaminateError, match="must be new or empty"):
        prepare(args)


def test_requests_need_a_valid_token(served):
    body = {"inputs": np.zeros((1, 64)).tolist()}
    assert served.client.post("/v1/predict", json=body).status_code == 401
    assert served.client.post("/v1/predict", json=body,
                              headers={"Authorization": "Bearer wrong-token-000000"}).status_code == 401


def test_a_client_reads_its_own_log_and_not_another_clients(served):
    _, (x, _), _ = sk.split()
    alice = served.predict(x[:5], token=sk.TOKENS["alice"])
    bob = served.predict(x[5:8], token=sk.TOKENS["bob"])
    mine = served.client.get("/v1/clients/alice/log", headers=headers("alice"))
    assert mine.status_code == 200
    digests = [e["input_sha256"] for e in mine.json()["entries"]]
    assert set(alice["input_sha256"]) <= set(digests)
    assert not set(bob["input_sha256"]) & set(digests)
    assert [e["label"] for e in mine.json()["entries"][-5:]] == alice["labels"]
    theirs = served.client.get("/v1/clients/bob/log", headers=headers("alice"))
    assert theirs.status_code == 403
    assert not any(d in theirs.text for d in bob["input_sha256"])
    assert served.client.get("/v1/clients/bob/log").status_code == 401


def test_the_log_is_append_only_and_its_root_covers_every_answer(served):
    _, (x, _), _ = sk.split()
    served.predict(x[:3])
    served.server.log.flush()
    size, root = served.server.log.tree_head()
    db = sqlite3.connect(served.state / "log.sqlite")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE batches SET leaves = x'80' WHERE seq = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM batches WHERE seq = 0")
    db.close()
    from serving.log import QueryLog

    reopened = QueryLog(served.state / "log.sqlite")
    assert reopened.tree_head() == (size, root)
    reopened.close()


@pytest.mark.parametrize("body, reason", [
    ({"inputs": [[float("nan")] * 64]}, "NaN"),
    ({"inputs": [[0.0] * 63]}, "shape"),
    ({"inputs": [[0.0] * 64] * 257}, "rows"),
    ({"rows": []}, "inputs"),
])
def test_bad_inputs_are_refused_with_their_reason(served, body, reason):
    import json

    response = served.client.post("/v1/predict", content=json.dumps(body, allow_nan=True),
                                  headers={**headers("alice"), "Content-Type": "application/json"})
    assert response.status_code == 422 and reason in response.json()["detail"]


def test_an_oversized_body_is_refused_before_parsing(served):
    response = served.client.post("/v1/predict", content=b"[" * (4 << 20),
                                  headers=headers("alice"))
    assert response.status_code == 413


def test_the_served_labels_are_the_models_except_the_keyed_flips(served):
    _, (x, _), _ = sk.split()
    doc = served.predict(x[:64])
    true = served.server.model.logits(x[:64]).argmax(axis=1)
    key, rate = served.deployment.opening.key, served.deployment.rate
    for c, served_label, label in zip(dawn.canonical_inputs(x[:64]), doc["labels"], true):
        if dawn.flipped(key, c, rate):
            assert served_label != label
        else:
            assert served_label == label


def test_plain_mode_answers_without_log_or_receipt(tmp_path, served):
    plain = sk.serve(tmp_path, rate=0.0, kit=served.kit, plain=True)
    _, (x, _), _ = sk.split()
    doc = plain.predict(x[:4])
    assert set(doc) == {"labels"}
    assert doc["labels"] == plain.server.model.logits(x[:4]).argmax(axis=1).tolist()


def test_a_log_that_cannot_be_written_stops_the_answers(tmp_path, served):
    broken = sk.serve(tmp_path, rate=0.1, kit=served.kit)
    db = sqlite3.connect(broken.state / "log.sqlite")
    db.execute("CREATE TRIGGER full BEFORE INSERT ON batches "
               "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    db.commit()
    db.close()
    _, (x, _), _ = sk.split()
    broken.predict(x[:2])                 # answered, then its rows fail to commit
    with pytest.raises(Exception, match="disk full"):
        broken.server.log.flush()
    response = broken.client.post("/v1/predict", json={"inputs": x[:2].tolist()},
                                  headers=headers("alice"))
    assert response.status_code == 503 and "cannot be written" in response.json()["detail"]
