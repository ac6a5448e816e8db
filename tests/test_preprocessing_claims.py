"""The preprocessing a model expects is a measured claim (claims.model.preprocessing), so
a third party reproduces the evaluation from the card alone: the raw test records, the
card's rule, the model file. The Merkle root of the records so made must be the card's
test root (the rule and the split are the ones measured), and the accuracy on them the
card's accuracy."""
import copy
import hashlib

import cbor2
import numpy as np
import pytest

from cardkit import PREPROCESSING, make_card
from cards import cbor, schema, views
from cards.errors import CardFormatError, LaminateError


def _payload_with(kit, **changes):
    payload = copy.deepcopy(kit.payload)
    payload["claims"]["model"]["preprocessing"].update(changes)
    return payload


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_card(tmp_path_factory.mktemp("prep"))


@pytest.mark.parametrize("field, value, reason", [
    ("divide", 0.0, "must be > 0"), ("divide", -1.0, "must be > 0"),
    ("subtract", float("inf"), "finite"), ("input_dtype", "float64", "expected one of"),
    ("class_names", ["only one"], "at least 2"), ("input_shape", [0], ">= 1"),
])
def test_schema_names_a_bad_preprocessing_field(kit, field, value, reason):
    with pytest.raises(CardFormatError) as err:
        schema.validate_payload(_payload_with(kit, **{field: value}))
    assert err.value.field.startswith(f"claims.model.preprocessing.{field}")
    assert reason in err.value.reason


def test_cards_sealed_before_the_claim_still_read(kit):
    payload = copy.deepcopy(kit.payload)
    del payload["claims"]["model"]["preprocessing"]
    schema.validate_payload(payload)            # optional: absent in older cards
    payload["claims"]["model"]["preprocessing"] = None
    with pytest.raises(CardFormatError, match="expected a map"):
        schema.validate_payload(payload)        # present means a real claim, never null


def test_views_and_exports_show_the_rule(kit):
    from verifier.exports import Source, to_cyclonedx
    page = views.to_markdown(kit.payload)
    assert "## Preprocessing (what the model expects)" in page
    assert "input = float32((raw - 0.0) / 1.0), reshaped in C order" in page
    assert "class 9" in page
    assert "input = float32" in views.to_html(kit.payload)
    bom = to_cyclonedx(Source(kit.card_bytes))
    assert "class names: [" in bom and "input = float32((raw - 0.0) / 1.0)" in bom


def test_the_wrapper_rule_is_the_stated_rule():
    """digits are scaled by the card's rule itself: (raw - 0) / 16 in float64, then
    float32, bit for bit what the loader feeds training."""
    from sklearn.datasets import load_digits as sk_digits

    from attest import datasets as ds
    data = ds.load_digits()
    claim = ds.preprocessing_claim(data)
    assert claim == {"source": data.preprocessing["source"], "subtract": 0.0, "divide": 16.0,
                     "input_shape": [1, 8, 8], "input_dtype": "float32",
                     "class_names": [str(c) for c in range(10)]}
    raw = sk_digits().data
    redone = ((raw - claim["subtract"]) / claim["divide"]).astype(np.float32)
    assert np.array_equal(redone.reshape(-1, 1, 8, 8), data.x)
    train, test = ds.split(data, 0.2, 0)
    assert test.preprocessing == data.preprocessing, "a split keeps its preprocessing"


def test_preprocessing_given_through_the_api_is_checked():
    from attest import datasets as ds
    data = ds.from_arrays("mine", np.zeros((4, 3)), [0, 1, 2, 0])
    assert ds.preprocessing_claim(data)["class_names"] == ["0", "1", "2"]
    stated = ds.preprocessing_claim(data, {"subtract": 0.5, "divide": 2.0,
                                           "class_names": ["a", "b", "c"]})
    assert (stated["subtract"], stated["divide"], stated["class_names"]) == (0.5, 2.0, ["a", "b", "c"])
    with pytest.raises(LaminateError, match="preprocessing.class_names: 2 names for 3 classes"):
        ds.preprocessing_claim(data, {"class_names": ["a", "b"]})
    with pytest.raises(LaminateError, match="preprocessing.mean: unknown field"):
        ds.preprocessing_claim(data, {"mean": 0.5})
    with pytest.raises(LaminateError, match="divide positive"):
        ds.preprocessing_claim(data, {"divide": 0})


def test_cardkit_states_what_its_records_are():
    assert PREPROCESSING["input_shape"] == [64]


# --- reproducing the evaluation from the card alone -------------------------------------

def _merkle_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 Merkle Tree Hash, from its definition."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + _merkle_root(leaves[:k]) + _merkle_root(leaves[k:])).digest()


def _records(x: np.ndarray, y: np.ndarray) -> list[bytes]:
    """FORMAT.md: a record is dcbor([label, little-endian float32 bytes of x])."""
    return [cbor2.dumps([int(label), x[i].astype("<f4").tobytes()], canonical=True)
            for i, label in enumerate(y)]


@pytest.mark.slow
def test_a_third_party_reproduces_the_measured_accuracy(tmp_path, monkeypatch):
    import onnxruntime as ort
    import yaml
    from sklearn.datasets import load_digits as sk_digits

    from attest.train import train_from_config
    from cards.card import open_card

    monkeypatch.setenv("LAMINATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LAMINATE_SIM_DIR", str(tmp_path / "sim"))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "name": "prep-digits", "dataset": {"name": "digits", "test_fraction": 0.2,
                                           "split_seed": 7},
        "model": {"hidden": [16]}, "training": {"epochs": 1, "seed": 3},
        "dp": {"enabled": False}, "watermark": {"enabled": False}}))
    result = train_from_config(config, tmp_path / "out", progress=lambda line: None)

    # What the third party has: the card, the model file, and the raw test records (the
    # dataset's owner publishes which records the split holds; here: the config's seed).
    claims = open_card(result.card_path.read_bytes()).claims
    prep = claims["model"]["preprocessing"]
    digits = sk_digits()
    split = claims["training"]["config"]["dataset"]
    order = np.random.default_rng(split["split_seed"]).permutation(len(digits.target))
    test_index = np.sort(order[:int(round(len(order) * split["test_fraction"]))])
    raw, labels = digits.data[test_index], digits.target[test_index]

    # The card's rule, applied with numpy alone.
    x = ((raw.astype(np.float64) - prep["subtract"]) / prep["divide"]).astype(prep["input_dtype"])
    x = x.reshape(-1, *prep["input_shape"])
    assert _merkle_root(_records(x, labels)).hex() == claims["dataset"]["test"]["merkle_root"], \
        "the records made by the card's rule are not the records the card measured"
    wrong = ((raw.astype(np.float64) - prep["subtract"]) / 15.0).astype(np.float32)
    assert _merkle_root(_records(wrong.reshape(x.shape), labels)).hex() \
        != claims["dataset"]["test"]["merkle_root"], "a wrong rule must not reproduce the root"

    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == claims["model"]["inputs"][0]["name"]
    predicted = session.run(None, {claims["model"]["inputs"][0]["name"]: x})[0].argmax(axis=1)
    assert float(np.mean(predicted == labels)) == claims["evaluation"]["accuracy"]
    per_class = [float(np.mean(predicted[labels == c] == c)) for c in range(len(prep["class_names"]))]
    assert per_class == claims["evaluation"]["per_class_accuracy"]
    assert len(x) == claims["evaluation"]["test_records"] == claims["dataset"]["test"]["records"]
    assert cbor.dumps(claims)  # the claims the check read are the card's own
