"""DAWN: stable keyed flips, exactly uniform wrong labels, and ownership of an extracted copy."""
import collections
import hashlib
import hmac
import json

import numpy as np
import pytest

import serving_kit as sk
from laminate.cli import main
from verifier import dawn, dawn_ownership
from verifier.suspect import OnnxSuspect

KEY = hashlib.sha256(b"test key").digest()


def test_the_wrong_label_is_uniform_over_the_other_classes_and_never_the_true_one():
    counts = collections.Counter()
    for i in range(9000):
        label = dawn.wrong_label(KEY, i.to_bytes(4, "big"), 4, 10)
        counts[label] += 1
    assert 4 not in counts and set(counts) == set(range(10)) - {4}
    # 9,000 draws over 9 labels: each count is Binomial(9000, 1/9), sd ~30.
    assert all(abs(c - 1000) < 150 for c in counts.values()), counts


def test_the_flip_rate_is_the_committed_rate():
    flips = sum(dawn.flipped(KEY, i.to_bytes(4, "big"), 0.05) for i in range(20000))
    assert abs(flips / 20000 - 0.05) < 0.006      # sd 0.0015
    assert not any(dawn.flipped(KEY, i.to_bytes(4, "big"), 0.0) for i in range(1000))


@pytest.mark.parametrize("key_bytes", [1, 32, 64, 65, 100])
def test_the_flip_decision_is_the_standard_hmac_of_the_input(key_bytes):
    """The server's precomputed HMAC pads must give HMAC-SHA256(key, "flip" || input)
    itself (RFC 2104), for keys shorter, equal to and longer than the block: an arbiter
    with only the standard library replays the same flips."""
    key = hashlib.sha256(bytes([key_bytes])).digest() * 4
    key = key[:key_bytes]
    for n in range(0, 600, 7):
        canonical = bytes(range(256)) * 3
        canonical = canonical[:n]
        reference = hmac.digest(key, b"flip\x00" + canonical, "sha256")[:8]
        assert dawn._flip_value(dawn._flip_pads(key), canonical) == reference, (key_bytes, n)


def test_one_input_has_one_canonical_form():
    row = np.linspace(-1, 1, 64, dtype=np.float32)
    row[0] = -0.0
    same = row.copy()
    same[0] = 0.0
    assert dawn.canonical_input(row) == dawn.canonical_input(same)
    assert dawn.canonical_input(row.astype(np.float64)) == dawn.canonical_input(row)
    assert dawn.canonical_input(row) != dawn.canonical_input(row.reshape(8, 8))
    assert np.array_equal(dawn.from_canonical(dawn.canonical_input(row), [64]), same)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return sk.serve(tmp_path_factory.mktemp("dawn"), rate=0.3)


def test_a_flipped_answer_is_stable_across_repeats_and_batches(served):
    _, (x, _), _ = sk.split()
    first = served.predict(x[:40])
    true = served.server.model.logits(x[:40]).argmax(axis=1)
    flipped = [i for i, (a, b) in enumerate(zip(first["labels"], true)) if a != b]
    assert flipped, "rate 0.3 over 40 inputs flips some (probability of none < 1e-6)"
    repeats = [served.predict(x[:40])["labels"],
               served.predict(x[:40][::-1])["labels"][::-1],       # other batch positions
               served.predict(x[:40], token=sk.TOKENS["bob"])["labels"]]   # another client
    assert all(labels == first["labels"] for labels in repeats)
    for i in flipped:   # alone in a batch, as a float64 JSON number: the same wrong label
        assert served.predict(x[i:i + 1].astype(np.float64))["labels"] == [first["labels"][i]]


def test_a_fresh_deployment_draws_a_fresh_key(served, tmp_path):
    again = sk.serve(tmp_path, rate=0.3, kit=served.kit)
    assert again.deployment.opening.key != served.deployment.opening.key
    assert again.deployment.card.dawn["key_commitment"] != served.deployment.card.dawn["key_commitment"]


# ---------------------------------------------------------------- ownership

@pytest.fixture(scope="module")
def stolen(tmp_path_factory):
    """A thief's label-only extraction through alice's account (1,000 queries, rate 0.05),
    an independent model trained on the same inputs' true labels, and bob's honest use."""
    tmp = tmp_path_factory.mktemp("stolen")
    served = sk.serve(tmp, rate=0.05)
    _, (xt, yt), (xq, yq) = sk.split()
    labels = []
    for start in range(0, len(xq), 100):
        labels += served.predict(xq[start:start + 100])["labels"]
    labels = np.asarray(labels)
    surrogate = sk.fit(xq, labels, seed=1)
    independent = sk.fit(xq, yq, seed=2)
    served.predict(xt[:200], token=sk.TOKENS["bob"])
    served.server.log.flush()
    paths = {"surrogate": sk.export(surrogate, tmp / "surrogate.onnx"),
             "independent": sk.export(independent, tmp / "independent.onnx")}
    accuracy = {name: float((OnnxSuspect(p).predict(xt) == yt).mean()) for name, p in paths.items()}
    accuracy["victim"] = float((served.server.model.logits(xt).argmax(1) == yt).mean())
    return served, paths, accuracy


def replay(served, client, suspect_path, *, opening=None, alpha=1e-6):
    served.server.log.flush()
    rows = dawn_ownership.client_rows(served.state / "log.sqlite", client)
    return dawn_ownership.dawn_ownership_test(
        served.deployment.card, opening or served.deployment.opening, rows,
        OnnxSuspect(served.kit.model_path), OnnxSuspect(suspect_path), alpha=alpha)


def test_a_surrogate_trained_on_a_clients_answers_is_shown(stolen):
    served, paths, accuracy = stolen
    assert accuracy["surrogate"] >= 0.9 * accuracy["victim"], accuracy
    result = replay(served, "alice", paths["surrogate"])
    assert result.shown, result.to_text()
    assert result.classes == 9          # the null is 1/(C-1)
    assert result.p_value <= 1e-6


def test_an_independent_model_is_not_shown(stolen):
    served, paths, _ = stolen
    result = replay(served, "alice", paths["independent"])
    assert not result.shown, result.to_text()
    assert result.match_rate < 0.2


def test_the_surrogate_is_not_shown_through_an_honest_clients_queries(stolen):
    served, paths, _ = stolen
    result = replay(served, "bob", paths["surrogate"])
    assert not result.shown, result.to_text()


def test_a_wrong_opening_shows_nothing(stolen):
    served, paths, _ = stolen
    wrong = dawn.Opening(b"\x02" * 32, served.deployment.opening.salt)
    result = replay(served, "alice", paths["surrogate"], opening=wrong)
    assert not result.shown and "does not match the commitment" in result.reason


def test_a_log_label_that_the_key_does_not_give_is_refused(stolen, tmp_path):
    from cards.errors import LaminateError

    served, paths, _ = stolen
    rows = dawn_ownership.client_rows(served.state / "log.sqlite", "alice")
    key, rate = served.deployment.opening.key, served.deployment.rate
    i = next(i for i, r in enumerate(rows) if dawn.flipped(key, r[2], rate))
    rows[i] = (*rows[i][:3], (rows[i][3] + 1) % 10)
    with pytest.raises(LaminateError, match=rf"log entry {rows[i][0]}: label"):
        dawn_ownership.dawn_ownership_test(
            served.deployment.card, served.deployment.opening, rows,
            OnnxSuspect(served.kit.model_path), OnnxSuspect(paths["surrogate"]), alpha=1e-6)


def test_ownership_command_with_a_serving_card(stolen, capsys):
    served, paths, _ = stolen
    base = ["ownership", "--serving-card", str(served.state / "serving-card.cbor"),
            "--dawn-opening", str(served.state / "dawn.opening.json"), "--client", "alice",
            "--log", str(served.state / "log.sqlite"), "--model", str(served.kit.model_path),
            "--json"]
    assert main(base + ["--suspect", str(paths["surrogate"])]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "shown" and out["classes"] == 9
    assert main(base + ["--suspect", str(paths["independent"])]) == 1
    assert main(base[:-1] + ["--suspect", str(paths["independent"]),
                             "--model", str(paths["independent"])]) == 2
    assert "statement.model_sha256" in capsys.readouterr().err
