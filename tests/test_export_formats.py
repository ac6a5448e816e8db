"""`laminate export`: each view loads in its own ecosystem's library and carries the
card's measured numbers, its digest and how to verify it."""
import hashlib
import json

import pytest

from cardkit import make_card
from laminate.cli import main
from verifier import exports
from verifier.cli_verify import jsonable


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_card(tmp_path_factory.mktemp("export"))


def export(kit, fmt, tmp_path, *extra):
    out = tmp_path / f"out.{fmt}"
    assert main(["export", str(kit.card_path), "--format", fmt, "--out", str(out), *extra]) == 0
    return out


def test_hf_readme_round_trips_through_model_card(kit, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    out = export(kit, "hf", tmp_path, "--license", "apache-2.0")
    card = hub.ModelCard.load(out)
    digest = hashlib.sha256(kit.card_bytes).hexdigest()
    evaluation = kit.claims["evaluation"]
    assert card.data.license == "apache-2.0"
    assert {"laminate", "differential-privacy", "watermarked",
            "simulated-attestation"} <= set(card.data.tags)
    assert set(card.data.datasets) == {"kit-train", "kit-test"}
    assert card.data.model_name == "kit-model"
    results = card.data.eval_results
    assert [r.metric_value for r in results] == [
        evaluation["accuracy"], *evaluation["per_class_accuracy"], evaluation["watermark_accuracy"]]
    for result in results:  # every number says where it was measured
        assert result.source_name == f"laminate card sha256:{digest}"
        assert result.dataset_revision == kit.claims["dataset"]["test"]["merkle_root"]
        assert result.dataset_split == "test"
    assert f"laminate verify {kit.card_path.name}" in card.text
    assert digest in card.text and kit.claims["model"]["sha256"] in card.text
    assert "proves nothing by itself" in card.text
    assert "SIMULATED HARDWARE" in card.text  # the claims body keeps the simulator banner


def test_hf_readme_without_defences_claims_none(tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    kit = make_card(tmp_path / "plain", dp=None, watermark_claim=None)
    card = hub.ModelCard.load(export(kit, "hf", tmp_path))
    assert card.data.license == "unknown"  # the card claims no license; the view invents none
    assert not {"differential-privacy", "watermarked"} & set(card.data.tags)
    assert len(card.data.eval_results) == 1 + len(kit.claims["evaluation"]["per_class_accuracy"])


def _cyclonedx_errors(text):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    return JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)


def test_cyclonedx_ml_bom_validates_and_carries_the_model_and_datasets(kit, tmp_path):
    pytest.importorskip("cyclonedx")
    text = export(kit, "cyclonedx", tmp_path).read_text()
    assert _cyclonedx_errors(text) is None
    bom = json.loads(text)
    assert bom["specVersion"] == "1.6"
    by_ref = {c["bom-ref"]: c for c in bom["components"]}
    model = by_ref["model"]
    assert model["type"] == "machine-learning-model"
    assert model["hashes"] == [{"alg": "SHA-256", "content": kit.claims["model"]["sha256"]}]
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["laminate:card_sha256"] == hashlib.sha256(kit.card_bytes).hexdigest()
    assert "laminate verify" in props["laminate:verify"]
    for split in ("train", "test"):
        data = by_ref[f"dataset-{split}"]
        roots = {p["name"]: p["value"] for p in data["properties"]}
        assert data["type"] == "data"
        assert roots["laminate:merkle_root"] == kit.claims["dataset"][split]["merkle_root"]
    card = model["modelCard"]
    assert card["modelParameters"]["datasets"] == [{"ref": "dataset-train"}, {"ref": "dataset-test"}]
    metrics = card["quantitativeAnalysis"]["performanceMetrics"]
    assert float(metrics[0]["value"]) == kit.claims["evaluation"]["accuracy"]
    assert "epsilon" in card["considerations"]["technicalLimitations"][0]


def test_cyclonedx_validator_checks_the_model_card_we_add(kit, tmp_path):
    """The modelCard is added to the library's JSON; the schema must still judge it."""
    pytest.importorskip("cyclonedx")
    bom = json.loads(export(kit, "cyclonedx", tmp_path).read_text())
    model = next(c for c in bom["components"] if c["bom-ref"] == "model")
    model["modelCard"]["quantitativeAnalysis"]["performanceMetrics"][0]["value"] = 0.93
    assert _cyclonedx_errors(json.dumps(bom)) is not None  # value must be a string


def test_intoto_statement_names_the_model_and_carries_the_claims(kit, tmp_path):
    statement = json.loads(export(kit, "intoto", tmp_path).read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [{"name": "kit-model.onnx",
                                     "digest": {"sha256": kit.claims["model"]["sha256"]}}]
    assert statement["predicateType"] == exports.PREDICATE_TYPE
    predicate = statement["predicate"]
    assert predicate["claims"] == jsonable(kit.claims)
    assert predicate["card"]["sha256"] == hashlib.sha256(kit.card_bytes).hexdigest()
    assert predicate["card"]["simulated"] is True
    assert "proves nothing by itself" in predicate["view"]


def test_intoto_statement_passes_the_reference_validator(kit, tmp_path):
    statement_mod = pytest.importorskip("in_toto_attestation.v1.statement")
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    text = export(kit, "intoto", tmp_path).read_text()
    parsed = json_format.Parse(text, statement_pb2.Statement())
    statement_mod.Statement.copy_from_pb(parsed).validate()
    emptied = json.loads(text)
    emptied["subject"][0]["digest"] = {}
    with pytest.raises(ValueError, match="digest"):
        statement_mod.Statement.copy_from_pb(
            json_format.Parse(json.dumps(emptied), statement_pb2.Statement())).validate()


@pytest.mark.parametrize("case, message", [
    ("missing card", "card file not found"),
    ("not a card", "not a valid card"),
    ("unknown format", "--format: unknown format 'spdx'"),
    ("no such directory", "does not exist"),
    ("out is a directory", "is a directory"),
])
def test_export_input_errors_are_one_line_exit_2(kit, tmp_path, capsys, case, message):
    card, fmt, out = str(kit.card_path), "hf", str(tmp_path / "README.md")
    if case == "missing card":
        card = str(tmp_path / "nope.cbor")
    elif case == "not a card":
        (tmp_path / "junk.cbor").write_bytes(b"\xa1junk")
        card = str(tmp_path / "junk.cbor")
    elif case == "unknown format":
        fmt = "spdx"
    elif case == "no such directory":
        out = str(tmp_path / "missing" / "README.md")
    else:
        out = str(tmp_path)
    assert main(["export", card, "--format", fmt, "--out", out]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
