"""`laminate export`: a card as the documents model hubs and supply-chain tools read.

A Hugging Face model card (README.md), a CycloneDX 1.6 ML-BOM and an in-toto Statement
are views of a signed card: each is written from the opened card, names the card's
SHA-256 and says how to verify it, and nothing ever reads one back as evidence. The card
is opened (parsed and schema-checked) but not appraised: exporting is not verifying.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import yaml

from cards import views
from cards.card import Card, card_digest, open_card
from cards.errors import LaminateError
from cards.files import write_atomic
from verifier.cli_verify import jsonable, read_card_file

FORMATS = ("hf", "cyclonedx", "intoto")
PREDICATE_TYPE = "https://laminate.dev/attestation/card/v1"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"


class Source:
    """The card being exported: the opened card and its digest (receipts aside)."""

    def __init__(self, card_bytes: bytes, card_name: str = "card.cbor"):
        self.card: Card = open_card(card_bytes)
        self.sha256 = card_digest(card_bytes)
        self.card_name = card_name

    @property
    def claims(self) -> dict:
        return self.card.claims

    @property
    def uri(self) -> str:
        """The card named by its content (RFC 6920 ni URI): where it lives is not known."""
        digest = base64.urlsafe_b64encode(bytes.fromhex(self.sha256)).rstrip(b"=").decode()
        return f"ni:///sha-256;{digest}"

    @property
    def verify_command(self) -> str:
        return (f"laminate verify {self.card_name} --model model.onnx --policy policy.yaml"
                f"  # card sha256 {self.sha256}")

    @property
    def view_note(self) -> str:
        return (f"View of the laminate card with SHA-256 {self.sha256}; it proves nothing by "
                f"itself. Trust only what `laminate verify` says of that card "
                f"(`laminate verify {self.card_name} --model model.onnx --policy policy.yaml`).")


def _task_type(claims: dict) -> str:
    """Hub task type: inputs with more than one feature axis are images, else a table."""
    features = claims["dataset"]["test"]["schema"]["features"]
    return "image-classification" if len(features) > 1 else "tabular-classification"


def _tags(source: Source) -> list[str]:
    claims = source.claims
    tags = ["laminate", "attested-training", "onnx"]
    if claims["defenses"]["dp"] is not None:
        tags.append("differential-privacy")
    if claims["defenses"]["watermark"] is not None:
        tags.append("watermarked")
    if source.card.simulated:
        tags.append("simulated-attestation")
    return tags


# --- Hugging Face ----------------------------------------------------------------------

def to_hf(source: Source, *, license_id: str = "unknown") -> str:
    """README.md for a model repository: YAML front matter a hub reads (model-index with
    the measured results, their source being the card) and the claims as Markdown."""
    claims = source.claims
    evaluation, test = claims["evaluation"], claims["dataset"]["test"]
    source_name = f"laminate card sha256:{source.sha256}"
    metrics = [{"type": "accuracy", "value": evaluation["accuracy"],
                "name": "Test accuracy (measured in the attested run)"}]
    metrics += [{"type": "accuracy", "value": value, "name": f"Accuracy of class {i}"}
                for i, value in enumerate(evaluation["per_class_accuracy"])]
    if evaluation["watermark_accuracy"] is not None:
        metrics.append({"type": "accuracy", "value": evaluation["watermark_accuracy"],
                        "name": "Watermark trigger accuracy"})
    result = {"task": {"type": _task_type(claims)},
              "dataset": {"name": test["name"], "type": test["name"], "split": "test",
                          "revision": test["merkle_root"]},
              "metrics": metrics,
              "source": {"name": source_name, "url": source.uri}}
    front = {"license": license_id, "library_name": "onnx", "tags": _tags(source),
             "datasets": sorted({claims["dataset"]["train"]["name"], test["name"]}),
             "metrics": ["accuracy"],
             "model-index": [{"name": claims["model"]["name"], "results": [result]}]}
    body = [f"> {source.view_note}", "",
            "## Verify", "", "```", source.verify_command, "```", "",
            f"Card SHA-256: `{source.sha256}`  ", f"Model SHA-256: `{claims['model']['sha256']}`",
            "", views.to_markdown(source.card.payload)]
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{header}---\n\n" + "\n".join(body)


# --- in-toto ---------------------------------------------------------------------------

def to_intoto(source: Source) -> str:
    """An in-toto Statement v1 whose subject is the model file and whose predicate is
    the card's claims, with the card's digest and how to verify it."""
    claims = source.claims
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": claims["model"]["name"] + ".onnx",
                     "digest": {"sha256": claims["model"]["sha256"]}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "view": source.view_note,
            "card": {"sha256": source.sha256, "verify": source.verify_command,
                     "backend": source.card.backend, "simulated": source.card.simulated,
                     "release_key_id": source.card.kid.hex()},
            "claims": jsonable(claims)}}
    return json.dumps(statement, indent=2, sort_keys=False) + "\n"


# --- CycloneDX -------------------------------------------------------------------------

def to_cyclonedx(source: Source) -> str:
    """A CycloneDX 1.6 ML-BOM: the model and both datasets as components, the model's
    modelCard with the measured results. cyclonedx-python-lib writes the BOM; it has no
    modelCard type yet, so the modelCard is added to its JSON (the whole document is then
    checked against the 1.6 schema by the same library's validator in the tests)."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    claims = source.claims
    model = claims["model"]
    note = Property(name="laminate:view", value=source.view_note)
    datasets = {}
    for split in ("train", "test"):
        data = claims["dataset"][split]
        datasets[split] = Component(
            type=ComponentType.DATA, name=data["name"], bom_ref=f"dataset-{split}",
            description=f"{split} split: {data['records']} records, Merkle root (RFC 9162 "
                        "tree over the records as laminate encodes them) in properties",
            properties=[Property(name="laminate:merkle_root", value=data["merkle_root"]),
                        Property(name="laminate:records", value=str(data["records"]))])
    component = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL, name=model["name"], bom_ref="model",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=model["sha256"])],
        properties=[note, Property(name="laminate:card_sha256", value=source.sha256),
                    Property(name="laminate:verify", value=source.verify_command),
                    Property(name="laminate:backend", value=source.card.backend)])
    bom = Bom(components=[component, *datasets.values()])
    bom.metadata.component = None
    bom.metadata.properties.add(note)
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    for entry in doc["components"]:
        if entry.get("bom-ref") == "model":
            entry["modelCard"] = _model_card(claims)
    return json.dumps(doc, indent=2) + "\n"


def _model_card(claims: dict) -> dict:
    evaluation = claims["evaluation"]
    test = claims["dataset"]["test"]["name"]
    metrics = [{"type": "accuracy", "value": repr(evaluation["accuracy"]), "slice": test}]
    metrics += [{"type": "accuracy", "value": repr(value), "slice": f"{test}, class {i}"}
                for i, value in enumerate(evaluation["per_class_accuracy"])]
    if evaluation["watermark_accuracy"] is not None:
        metrics.append({"type": "accuracy", "value": repr(evaluation["watermark_accuracy"]),
                        "slice": "watermark triggers"})
    tensors = [{"format": f"{t['name']} {t['dtype']} {t['shape']}"} for t in claims["model"]["inputs"]]
    prep = claims["model"].get("preprocessing")
    if prep is not None:
        tensors = [{"format": f"{t['format']}; " + "; ".join(
            f"{name}: {value}" for name, value in views.preprocessing_rows(prep))}
            for t in tensors]
    dp = claims["defenses"]["dp"]
    considerations = {}
    if dp is not None:
        considerations["technicalLimitations"] = [
            f"trained with DP-SGD: epsilon {dp['epsilon']:.6g} at delta {dp['delta']:.3g} "
            f"({dp['privacy_accounting']} accounting)"]
    card = {"modelParameters": {
                "approach": {"type": "supervised"}, "task": "classification",
                "datasets": [{"ref": "dataset-train"}, {"ref": "dataset-test"}],
                "inputs": tensors,
                "outputs": [{"format": f"{t['name']} {t['dtype']} {t['shape']}"}
                            for t in claims["model"]["outputs"]]},
            "quantitativeAnalysis": {"performanceMetrics": metrics}}
    if considerations:
        card["considerations"] = considerations
    return card


# --- the command -----------------------------------------------------------------------

_WRITERS = {"hf": to_hf, "cyclonedx": to_cyclonedx, "intoto": to_intoto}


def register(sub) -> None:
    """Add `export` to an argparse subparsers object."""
    export = sub.add_parser(
        "export", help="write a card as a Hugging Face README, CycloneDX ML-BOM or in-toto Statement",
        description="Write a view of a card for a model hub or supply-chain tool. The "
        "output names the card's SHA-256 and how to verify it; it is not evidence.")
    export.add_argument("card", help="card.cbor")
    export.add_argument("--format", required=True, help="hf | cyclonedx | intoto")
    export.add_argument("--out", required=True, metavar="PATH", help="file to write")
    export.add_argument("--license", default="unknown",
                        help="hf: the license identifier for the front matter (the card "
                             "claims none; default: unknown)")
    export.set_defaults(func=run_export)


def run_export(args) -> int:
    """Write the export; input problems are one-line LaminateErrors (exit 2)."""
    if args.format not in FORMATS:
        raise LaminateError(f"--format: unknown format {args.format!r} "
                            f"(choose one of {', '.join(FORMATS)})")
    out = Path(args.out)
    if out.is_dir():
        raise LaminateError(f"{out}: --out is a directory, not a file path")
    if not out.parent.is_dir():
        raise LaminateError(f"{out}: --out: directory {out.parent} does not exist")
    card_bytes = read_card_file(args.card)
    try:
        source = Source(card_bytes, Path(args.card).name)
    except LaminateError as exc:
        raise LaminateError(f"{args.card}: not a valid card: {exc}") from None
    if args.format == "cyclonedx":
        try:
            import cyclonedx  # noqa: F401
        except ModuleNotFoundError:
            raise LaminateError("--format cyclonedx needs the export extra (cyclonedx-python-lib "
                                "is not installed): pip install -e '.[export]'") from None
    text = to_hf(source, license_id=args.license) if args.format == "hf" else \
        _WRITERS[args.format](source)
    write_atomic(out, text.encode("utf-8"))
    print(f"wrote {out} ({args.format} view of card sha256 {source.sha256})")
    return 0
