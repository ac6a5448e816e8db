"""Builds real cards for tests, honest or forged, without torch.

`make_card` runs the genuine prover path (measurements, an `AttestedSession` over a
simulated device, sealing) on a tiny ONNX model and fake records, and writes a policy
that trusts exactly this kit. `forge` then changes one thing at a time the way an
attacker could: edit claims or log events, re-quote with the device it controls, re-sign
with the release key (or another key), or leave a stale signature in place.
"""
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cbor2
import numpy as np
import yaml

from attest import measure
from attest.backend import open_backend
from attest.session import REGISTERS, AttestedSession, write_card
from cards import card as cardlib
from cards import cbor, cose, keys, schema, watermark

FEATURES = 64
CLASSES = 10
TRAIN_RECORDS = 60
TEST_RECORDS = 30

# The DP schedule the wrapper derives for CONFIG (16 epochs of 60 records, batches of 1):
# Poisson sampling at rate 1/60, 960 steps (verifier.dp_check.expected_schedule).
DP_DEFAULTS = {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "sample_rate": 1.0 / 60,
               "steps": 960, "delta": 1e-5}
EVALUATION = {"accuracy": 0.93, "per_class_accuracy": [0.9, 0.95, 0.92, 0.94, 0.91, 0.96,
                                                       0.93, 0.9, 0.94, 0.95],
              "test_records": TEST_RECORDS, "watermark_accuracy": 0.97}
CONFIG = {"name": "kit-model", "dataset": {"name": "kit-digits"},
          "model": {"arch": "mlp", "hidden": [32]},
          "training": {"epochs": 16, "batch_size": 1, "lr": 0.1, "seed": 0},
          "dp": {"enabled": True, "target_epsilon": None, "noise_multiplier": 1.1,
                 "max_grad_norm": 1.0, "delta": 1e-5},
          "watermark": {"enabled": True, "trigger_count": 100, "schedule": "joint"}}
WATERMARK_TRIGGERS = 100
ADVERSARIAL = {"method": "pgd", "norm": "linf", "epsilon": 0.1, "step_size": 0.025, "steps": 10,
               "train_fraction": 1.0, "attack_seed": hashlib.sha256(b"kit-attack").hexdigest(),
               "examples_merkle_root": hashlib.sha256(b"kit-examples").hexdigest(),
               "adversarial_accuracy": 0.81, "test_records": TEST_RECORDS}
RADIOACTIVE_COSINES = (0.45, 0.52, 0.38, 0.41, 0.5, 0.47, 0.44, 0.39, 0.55, 0.48)   # detected
RADIOACTIVE_CONFIG = {"enabled": True, "fraction": 0.1, "epsilon": 0.1, "steps": 50,
                      "marking_epochs": 2}


def radioactive_claim(session, out_dir: Path, *, cosines=RADIOACTIVE_COSINES) -> dict:
    """An honest radioactive claim over the kit's train split, its opening saved beside."""
    from cards import radioactive

    marked = radioactive.marked_count(0.1, TRAIN_RECORDS)
    params = radioactive.make_parameters(CLASSES, FEATURES, TRAIN_RECORDS, marked)
    opening = radioactive.Opening(session.random(32), session.random(32), params)
    opening.save(Path(out_dir) / "radioactive.opening")
    return {"scheme": radioactive.SCHEME, "commitment": opening.commitment,
            "carriers_sha256": radioactive.carriers_digest(opening.carriers()),
            "classes": CLASSES, "feature_dim": FEATURES, "fraction": 0.1, "marked_records": marked,
            "epsilon": 0.1, "marking_steps": 50, "marking_epochs": 2,
            "marked_merkle_root": hashlib.sha256(b"kit-marked").hexdigest(),
            "test": "white-box-cosine-fisher", "alignment_records": TEST_RECORDS,
            "cosines": list(cosines), "p_value": radioactive.combined_p_value(cosines, FEATURES),
            "loss_difference": 0.21}


@dataclass
class CardKit:
    tmp_path: Path
    card_bytes: bytes
    card_path: Path
    model_path: Path
    release_public_pem_path: Path
    root_pem_path: Path
    code_sha256: str
    policy_path: Path
    device: object            # the SimDevice behind the card (sim backend only)
    private_key: object       # the release key
    claims: dict
    evidence: dict
    opening: object           # cards.watermark.Opening of the card's watermark, or None
    opening_path: Path

    @property
    def payload(self) -> dict:
        return {"schema_version": schema.SCHEMA_VERSION, "claims": self.claims,
                "evidence": self.evidence}


def rdp_epsilon(noise_multiplier, sample_rate, steps, delta) -> float:
    """Epsilon from Opacus's RDP analysis with the RDP accountant's default orders.

    The analysis file is loaded on its own so the kit never imports torch."""
    spec = importlib.util.find_spec("opacus")
    path = Path(spec.submodule_search_locations[0]) / "accountants" / "analysis" / "rdp.py"
    module_spec = importlib.util.spec_from_file_location("_kit_opacus_rdp", path)
    rdp = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(rdp)
    alphas = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    orders = rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier,
                             steps=steps, orders=alphas)
    epsilon, _ = rdp.get_privacy_spent(orders=alphas, rdp=orders, delta=delta)
    return float(epsilon)


def make_onnx_model(path, *, features=FEATURES, classes=CLASSES, seed=0) -> Path:
    """A real one-layer classifier (Gemm) that onnxruntime can run."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(size=(features, classes)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(classes,)).astype(np.float32), "b")
    return save_onnx_classifier(path, [helper.make_node("Gemm", ["input", "W", "b"], ["logits"])],
                                [weight, bias], input_shape=[features], classes=classes, name="kit")


def save_onnx_classifier(path, nodes, inits, *, input_shape, classes, name) -> Path:
    """Write a checked ONNX model (opset 17, IR 8) of ``nodes``, from float "input"
    [batch, *input_shape] to float "logits" [batch, classes], as the wrapper exports."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


# How the kit's fake records were made: uniform floats, as they are.
PREPROCESSING = {"source": "kit: uniform random floats in [0, 1)", "subtract": 0.0,
                 "divide": 1.0, "input_shape": [FEATURES], "input_dtype": "float32",
                 "class_names": [f"class {c}" for c in range(CLASSES)]}

# A start the wrapper drew itself (the kit's model is not trained, so the digests are labels).
START = {"kind": "random", "seed": hashlib.sha256(b"kit-seed").hexdigest(),
         "init": "torch.nn.Module.reset_parameters (kit)",
         "sha256": hashlib.sha256(b"kit-weights").hexdigest()}


def fake_records(count, *, seed):
    rng = np.random.default_rng(seed)
    for i in range(count):
        yield rng.random(FEATURES, dtype=np.float32), i % CLASSES


def distributed_claim(world: int, config: dict, wrapper_sha256: str) -> dict:
    """The section `world` honest ranks would report for the kit's train records."""
    from attest import datasets
    from attest.distributed import measure_shard
    from cards import shards

    pairs = list(fake_records(TRAIN_RECORDS, seed=1))
    data = datasets.ArrayData("kit-train", np.stack([x for x, _ in pairs]),
                              np.array([y for _, y in pairs]), CLASSES)
    epochs, batch = config["training"]["epochs"], config["training"]["batch_size"]
    steps = shards.steps_per_epoch(TRAIN_RECORDS, world, batch)
    ranks = []
    for rank in range(world):
        first, stop = shards.shard_bounds(TRAIN_RECORDS, world, rank)
        report = measure_shard(data.subset("s", np.arange(first, stop)), first, CLASSES)
        digest = shards.shard_digest(bytes.fromhex(h) for h in report["range_roots"]).hex()
        fed = [{"epoch": e, "records": stop - first, "shard_digest": digest,
                "fed": shards.expected_fed(stop - first, steps, batch)} for e in range(1, epochs + 1)]
        ranks.append({"rank": rank, **report, "wrapper_sha256": wrapper_sha256, "fed": fed})
    return {"world_size": world, "backend": "gloo", "assignment": shards.ASSIGNMENT,
            "shard_digest": shards.SHARD_DIGEST, "ranks": ranks}


def dp_claim(**overrides) -> dict:
    """A DP claim with the kit's parameters; epsilon recomputed unless overridden."""
    params = {**DP_DEFAULTS, **{k: v for k, v in overrides.items() if k in DP_DEFAULTS}}
    claim = {"mechanism": "dp-sgd", **params, "accountant": "rdp",
             "epsilon": rdp_epsilon(params["noise_multiplier"], params["sample_rate"],
                                    params["steps"], params["delta"]),
             "privacy_accounting": "tight", "non_dp_records": 0, "note": ""}
    claim.update(overrides)
    return claim


def make_card(tmp_path, *, backend="sim", key_kind="ed25519", tcti=None, dp=True,
              watermark_claim=True, evaluation=None, config=None, entry_point=Path(__file__),
              policy=None, start=None, distributed=None, adversarial=None, radioactive=None,
              **forgery) -> CardKit:
    """Seal an honest card in tmp_path; any `forge` keyword then forges it.

    entry_point: the script measured as the entry point (None: the card says none).
    dp / watermark_claim: True for the kit's defaults, None for no defence, a dict of
    fields to override (dp epsilon is recomputed from the parameters unless given).
    adversarial: None for no adversarial training, or fields merged into ADVERSARIAL.
    radioactive: None for no radioactive data, or fields merged into an honest claim
    whose opening is saved as tmp_path/radioactive.opening.
    evaluation: fields merged into the default evaluation. policy: keys merged into the
    kit's policy mapping (e.g. {"require": ["defenses.dp.epsilon <= 3"]}).
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    release_key = keys.generate_private_key(key_kind)
    keys.save_private_key(release_key, tmp_path / "release.key")
    public_pem_path = tmp_path / "release.pub.pem"
    public_pem_path.write_bytes(keys.public_pem(release_key))
    model_path = make_onnx_model(tmp_path / "model.onnx")

    attestation = open_backend(backend, sim_dir=tmp_path / "sim", tcti=tcti)
    session = AttestedSession(attestation, release_key)
    code = measure.code_claim(entry_point)
    session.measure_code(code)
    session.measure_config(measure.config_claim(config if config is not None else CONFIG))
    session.measure_dataset("train", measure.dataset_claim(
        "kit-train", fake_records(TRAIN_RECORDS, seed=1), CLASSES))
    session.measure_dataset("test", measure.dataset_claim(
        "kit-test", fake_records(TEST_RECORDS, seed=2), CLASSES))
    session.measure_start(start or START)
    session.measure_dp(None if dp is None else dp_claim(**(dp if isinstance(dp, dict) else {})))
    opening = None
    opening_path = tmp_path / "watermark.opening.json"
    if watermark_claim is not None:
        params = watermark.make_parameters(WATERMARK_TRIGGERS, CLASSES, [FEATURES], [0.0, 1.0])
        opening = watermark.Opening.create(session.random(32), params, salt=session.random(32))
        opening.save(opening_path)
        claim = {"scheme": watermark.SCHEME, "commitment": opening.commitment,
                 "trigger_count": WATERMARK_TRIGGERS, "classes": CLASSES, "schedule": "joint"}
        if isinstance(watermark_claim, dict):
            claim.update(watermark_claim)
        session.measure_watermark(claim)
    else:
        session.measure_watermark(None)
    if distributed is not None:
        session.measure_distributed(distributed_claim(distributed, config or CONFIG,
                                                      code["wrapper_sha256"]))
    if adversarial is not None:
        session.measure_adversarial({**ADVERSARIAL, **adversarial})
    if radioactive is not None:
        session.measure_radioactive({**radioactive_claim(session, tmp_path), **radioactive})
    session.measure_evaluation({**EVALUATION, **(evaluation or {}),
                                **({} if watermark_claim is not None
                                   else {"watermark_accuracy": None})})
    session.measure_model({**measure.model_claim(model_path, "kit-model"),
                           "preprocessing": PREPROCESSING})
    card_bytes = session.seal()
    files = write_card(tmp_path / "card", card_bytes)

    device = getattr(attestation, "device", None)
    root_pem_path = tmp_path / "sim-root.pem"
    if device is not None:
        root_pem_path.write_bytes(device.root_certificate_pem())
    policy_doc = {"policy_id": "cardkit", "allow_backends": [backend],
                  "trusted_roots": [root_pem_path.name] if device is not None else [],
                  "trusted_release_keys": [public_pem_path.name],
                  "reference_values": {"code": [code["wrapper_sha256"]]},
                  "require": ["evaluation.accuracy >= 0.5"]}
    policy_doc.update(policy or {})
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy_doc, sort_keys=False), encoding="utf-8")
    attestation.close()

    sealed = cardlib.open_card(card_bytes)
    kit = CardKit(tmp_path=tmp_path, card_bytes=card_bytes, card_path=files.cbor,
                  model_path=model_path, release_public_pem_path=public_pem_path,
                  root_pem_path=root_pem_path, code_sha256=code["wrapper_sha256"],
                  policy_path=policy_path, device=device, private_key=release_key,
                  claims=sealed.claims, evidence=sealed.evidence, opening=opening,
                  opening_path=opening_path)
    if forgery:
        forged = forge(kit, **forgery)
        kit.card_bytes = forged
        kit.card_path.write_bytes(forged)
    return kit


def forge(kit: CardKit, *, mutate_claims=None, mutate_events=None, redigest=True,
          requote=False, mutate_evidence=None, resign=True, signing_key=None) -> bytes:
    """Card bytes for `kit` changed the way the arguments say (the kit is not modified).

    mutate_claims(claims) / mutate_events(event_log) / mutate_evidence(evidence): edit in
    place or return a replacement. redigest: recompute each event's digest from its data
    (False leaves the digests as the mutation left them). requote: reset the kit's device,
    replay the (mutated) log into it and quote H(dcbor(claims)) again, as an attacker who
    runs software on the device can. resign: sign with `signing_key` (default the kit's
    release key); False keeps the original protected header and signature.
    mutate_evidence runs last, after any requote.
    """
    # A copy through CBOR, not copy.deepcopy: open_card gives each event's data as the
    # very claims section it repeats, and a deep copy would keep them one object.
    payload = cbor2.loads(cbor2.dumps(kit.payload))
    if mutate_claims is not None:
        payload["claims"] = _applied(mutate_claims, payload["claims"])
    evidence = payload["evidence"]
    if mutate_events is not None:
        evidence["event_log"] = _applied(mutate_events, evidence["event_log"])
        if redigest:
            for event in evidence["event_log"]:
                event["digest"] = schema.event_digest(event["type"], event["data"])
    if requote:
        device = kit.device
        device.reset_registers(REGISTERS)
        for event in evidence["event_log"]:
            device.extend(event["register"], event["digest"])
        evidence["quote"], evidence["signature"] = device.quote(
            REGISTERS, schema.claims_digest(payload["claims"]))
    if mutate_evidence is not None:
        payload["evidence"] = _applied(mutate_evidence, evidence)
    payload_bytes = cbor.dumps(payload)
    if resign:
        key = signing_key if signing_key is not None else kit.private_key
        return cose.sign1(payload_bytes, key, kid=keys.key_id(key.public_key()))
    original = cose.parse_sign1(kit.card_bytes)
    return cbor2.dumps(cbor2.CBORTag(18, [original.protected_bytes, {}, payload_bytes,
                                          original.signature]), canonical=True)


def _applied(fn, value):
    result = fn(value)
    return value if result is None else result


def quote_info(card_bytes: bytes) -> dict:
    """The decoded sim QuoteInfo inside a card (for tests that inspect it)."""
    return cbor2.loads(cardlib.open_card(card_bytes).evidence["quote"])
