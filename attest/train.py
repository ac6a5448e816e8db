"""The attested training wrapper: measure, train, evaluate, export, seal, in one session.

Everything the card claims is measured by this code inside one `AttestedSession`, in the
order FORMAT.md fixes: code identity, resolved config, train split, test split, defenses,
evaluation, model. Evaluation runs on the exported ONNX file through onnxruntime, so the
accuracies describe the released bytes, not the torch object that produced them.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attest import datasets as ds
from attest import export
from attest.config import TrainConfig, from_dict, load_config
from attest.defenses import watermark as wm
from cards import keys
from cards.errors import LaminateError
from cards.ewe import SCHEMES as EWE_SCHEMES
from cards.files import write_atomic

OPENING_NAME = "watermark.opening"
MODEL_NAME = "model.onnx"
PUBLIC_KEY_NAME = "release-public.pem"


@dataclass
class TrainResult:
    out_dir: Path
    card_path: Path
    model_path: Path
    opening_path: Path | None
    card_bytes: bytes
    claims: dict


def _print(line: str) -> None:
    print(line, flush=True)


def load_release_key(path: Path, *, create: bool):
    """The card-signing key; the default one is created (0600) on first use."""
    path = Path(path)
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        keys.save_private_key(keys.generate_private_key("ed25519"), path)
    return keys.load_private_key(path)


def _release_key(release_key, config: TrainConfig):
    if release_key is None:
        return load_release_key(config.release_key_path(), create=not config["release_key"])
    if isinstance(release_key, (str, os.PathLike)):
        return load_release_key(Path(release_key), create=False)
    return release_key


def _make_optimizer(params, training: dict) -> torch.optim.Optimizer:
    if training["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=training["lr"])
    return torch.optim.SGD(params, lr=training["lr"])


def _onnx_predictor(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        out = [session.run(None, {name: x[i:i + 512]})[0].argmax(axis=1) for i in range(0, len(x), 512)]
        return np.concatenate(out).astype(np.int64)

    return predict


def predict_labels(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Argmax labels of a torch model on a float32 batch, in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        labels = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    model.train(was_training)
    return labels


def evaluate(predict, test: ds.ArrayData, watermark: wm.Watermark | None) -> dict:
    """The `evaluation` claim; a class with no test records gets accuracy 0.0 (its
    label histogram entry in `dataset.test` shows 0 records)."""
    pred = predict(test.x)
    per_class = []
    for c in range(test.classes):
        mask = test.y == c
        per_class.append(float(np.mean(pred[mask] == c)) if mask.any() else 0.0)
    return {
        "accuracy": float(np.mean(pred == test.y)),
        "per_class_accuracy": per_class,
        "test_records": len(test),
        "watermark_accuracy": watermark.accuracy(predict) if watermark else None,
    }


class Trainer:
    """The training loops (main phase, optional non-DP watermark phase) and their progress.

    Measures nothing: `train()` wraps it in an attested session; benchmarks use it to
    train the same way without one."""

    def __init__(self, model, train_data: ds.ArrayData, config: TrainConfig, watermark, progress,
                 adversarial=None):
        self.model = model
        self.adversarial = adversarial
        self.data = train_data
        self.config = config
        self.watermark = watermark
        self.progress = progress
        self.seed = config["training"]["seed"]
        self.loss_fn = nn.CrossEntropyLoss()
        self.dp = None
        self.split_records = 0

    def run(self) -> nn.Module:
        with warnings.catch_warnings():
            # Opacus's per-sample hooks fire on inputs that need no gradient; torch says so.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return self._run()

    def _run(self) -> nn.Module:
        training, dpc = self.config["training"], self.config["dp"]
        generator = torch.Generator().manual_seed(self.seed)
        loader = torch.utils.data.DataLoader(self.data.to_torch(), batch_size=training["batch_size"],
                                             shuffle=True, generator=generator)
        optimizer = _make_optimizer(self.model.parameters(), training)
        model, step = self.model, optimizer.step
        if dpc["enabled"]:
            from attest.defenses.dp import DPTraining

            self.dp = DPTraining(self.model, optimizer, loader, dpc, epochs=training["epochs"])
            model, optimizer, loader, step = self.dp.model, self.dp.optimizer, self.dp.loader, self.dp.step
        joint = self.watermark if self.watermark and self.watermark.schedule == "joint" else None
        # EWE interleaves its own steps (SNNL couples samples, so not under DP: there its
        # stamped records are mixed into the DP batches like triggers).
        interleave = joint if joint is not None and getattr(joint, "interleaved", False) and not self.dp else None
        joint = None if interleave else joint
        ewe_rng = np.random.default_rng(self.seed + 4)
        sampler = joint.sampler(self.seed) if joint else None
        k = joint.per_batch(training["batch_size"]) if joint else 0
        for epoch in range(1, training["epochs"] + 1):
            stats = _Stats()
            model.train()
            for xb, yb in loader:
                if self.adversarial is not None and len(xb):
                    xb = self._attack(model, xb, yb)
                if joint:
                    idx = sampler.take(k)
                    xb = torch.cat([xb, torch.from_numpy(joint.x[idx])])
                    yb = torch.cat([yb, torch.from_numpy(joint.y[idx])])
                optimizer.zero_grad(set_to_none=True)
                out = model(xb)
                loss = self.loss_fn(out, yb)
                loss.backward()
                step()
                stats.add(loss, out, yb, len(yb) - k)
                if interleave:
                    interleave.step(model, optimizer, training["batch_size"], ewe_rng)
            self._report("train" if not self.dp else "dp", epoch, training["epochs"], stats, model)
        module = self.dp.release_model() if self.dp else self.model
        if self.watermark and self.watermark.schedule == "split":
            self._split_phase(module)
        return module

    def _attack(self, model, xb, yb):
        """PGD on the real records of a batch; DP's per-sample hooks stay off meanwhile,
        so the attack's gradients never reach the clipped, noised update."""
        hooked = hasattr(model, "disable_hooks")
        if hooked:
            model.disable_hooks()
        try:
            return self.adversarial.perturb(model, xb, yb)
        finally:
            if hooked:
                model.enable_hooks()

    def _split_phase(self, module: nn.Module) -> None:
        """Non-DP phase: triggers plus a fixed handful of real records (as many as triggers).

        After DP-SGD the batch gradient stays clipped to the DP clipping norm: the learning
        rate was chosen for clipped steps, and DP noise leaves large logits whose first
        unclipped gradients on random-label triggers blow a CNN up to a constant output."""
        training, mark = self.config["training"], self.watermark
        rng = np.random.default_rng(self.seed + 1)
        anchors = rng.choice(len(self.data), size=min(len(mark.y), len(self.data)), replace=False)
        self.split_records = len(anchors)
        batch = training["batch_size"]
        k = min(mark.per_batch(batch), batch - 1)
        trig, real = mark.sampler(self.seed + 2), wm.CyclingSampler(len(anchors), self.seed + 3)
        optimizer = _make_optimizer(module.parameters(), training)
        steps = math.ceil(len(self.data) / batch)
        for epoch in range(1, mark.split_epochs + 1):
            stats = _Stats()
            module.train()
            for _ in range(steps):
                ti, ri = trig.take(k), anchors[real.take(batch - k)]
                xb = torch.from_numpy(np.concatenate([self.data.x[ri], mark.x[ti]]))
                yb = torch.from_numpy(np.concatenate([self.data.y[ri], mark.y[ti]]))
                optimizer.zero_grad(set_to_none=True)
                out = module(xb)
                loss = self.loss_fn(out, yb)
                loss.backward()
                if self.dp:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), self.dp.max_grad_norm)
                optimizer.step()
                stats.add(loss, out, yb, batch - k)
            self._report("watermark", epoch, mark.split_epochs, stats, module)

    def _report(self, phase, epoch, epochs, stats, model) -> None:
        parts = [f"[{phase}] epoch {epoch}/{epochs}", f"loss {stats.loss:.4f}", f"accuracy {stats.accuracy:.3f}"]
        if self.watermark:
            parts.append(f"watermark {self.watermark.accuracy(lambda x: predict_labels(model, x)):.2f}")
        if self.dp:
            spent = f"epsilon {self.dp.epsilon():.2f}"
            parts.append(spent if phase == "dp" else f"{spent} (DP phase only; this phase is not private)")
        self.progress("  ".join(parts))


class _Stats:
    """Running loss and accuracy on the real (non-trigger) samples of each batch."""

    def __init__(self):
        self.loss_sum, self.batches, self.correct, self.seen = 0.0, 0, 0, 0

    def add(self, loss, out, yb, real: int) -> None:
        self.loss_sum += float(loss.detach())
        self.batches += 1
        self.correct += int((out[:real].argmax(dim=1) == yb[:real]).sum())
        self.seen += real

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.batches, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)


def train(model: nn.Module, train_data, test_data, config, *, out_dir, backend=None,
          release_key=None, entry_point=None, progress=None, start=None,
          parent_card=None, preprocessing=None) -> TrainResult:
    """Train `model` on `train_data` through the attested wrapper and seal a card in `out_dir`.

    `train_data`/`test_data`: a torch `Dataset` of (input, label), an (x, y) pair of
    arrays, or `ArrayData`. `config`: a `TrainConfig` or a config mapping (whose
    `dataset.name` is then just the label the card shows). `backend`: an open
    attestation backend (default: the config's). `release_key`: a private key or PEM
    path (default: the config's).
    `entry_point`: the user's training script, measured into the code identity (default:
    the script this process runs; none in a REPL). `progress`: a callable taking one
    line per epoch (default: print). `start` (attest.start): "random" re-draws every
    weight from the session's randomness; "external" (the default) measures the weights
    handed in by digest; `parent_card` (card bytes or path) makes it a "parent" start.
    `preprocessing`: how arrays you made yourself came from raw records ({"source",
    "subtract", "divide", "class_names"}; see `datasets.scale`), stated in the card.
    """
    from attest import start as start_mod
    from attest.measure import code_claim, config_claim, dataset_claim, main_script, model_claim
    from attest.session import AttestedSession, make_out_dir

    config = config if isinstance(config, TrainConfig) else from_dict(config, data_given=True)
    progress = progress or _print
    classes = config["dataset"]["classes"]
    name = config["dataset"]["name"]
    train_set = ds.as_array_data(train_data, f"{name}:train", classes)
    test_set = ds.as_array_data(test_data, f"{name}:test", classes)
    classes = classes or max(train_set.classes, test_set.classes)
    train_set, test_set = (ds.as_array_data(d, d.name, classes) for d in (train_set, test_set))
    if train_set.input_shape != test_set.input_shape:
        raise LaminateError(f"dataset: train inputs are {list(train_set.input_shape)}, "
                            f"test inputs are {list(test_set.input_shape)}")
    prep = ds.preprocessing_claim(test_set, preprocessing)
    entry_point = main_script() if entry_point is None else entry_point
    start = start or ("parent" if parent_card is not None else "external")
    start_mod.check(start, parent_card)
    if entry_point is not None and not Path(entry_point).is_file():
        raise LaminateError(f"entry_point: file not found: {entry_point}")
    signing_key = _release_key(release_key, config)
    out_dir = make_out_dir(out_dir)

    owned = backend is None
    if owned:
        from attest.backend import open_backend

        att = config["attestation"]
        backend = open_backend(att["backend"], sim_dir=att["sim_dir"], tcti=att["tpm"],
                               pcrs=att["tpm_pcrs"])
    try:
        started = time.monotonic()
        session = AttestedSession(backend, signing_key)
        session.measure_code(code_claim(entry_point))
        session.measure_config(config_claim(config.measured()))
        session.measure_dataset("train", dataset_claim(train_set.name, train_set.records(), classes))
        session.measure_dataset("test", dataset_claim(test_set.name, test_set.records(), classes))
        progress(f"measured: code, config, train split ({len(train_set)} records), "
                 f"test split ({len(test_set)} records) on the {backend.name} backend")
        start_claim = start_mod.measure(session, model, kind=start, parent_card=parent_card,
                                        example=test_set.x, work_dir=out_dir)
        session.measure_start(start_claim)
        progress(f"initial weights: {start_claim['kind']}"
                 + ("" if start_claim["kind"] == "random" else
                    f" (handed in, state_dict sha256 {start_claim['sha256'][:16]}...)"))

        torch.manual_seed(config["training"]["seed"])     # init order, DP noise; numpy RNGs are local
        mark = None
        if config["watermark"]["enabled"]:
            w = config["watermark"]
            if w["scheme"] in ("ewe", "margin"):
                from attest.defenses import ewe

                mark = ewe.create(session, model, train_set, trigger_count=w["trigger_count"],
                                  classes=classes, schedule=w["schedule"], weight=w["weight"],
                                  split_epochs=w["split_epochs"], lr=config["training"]["lr"],
                                  seed=config["training"]["seed"], margin=w["scheme"] == "margin")
            else:
                mark = wm.create(session, trigger_count=w["trigger_count"], classes=classes,
                                 input_shape=train_set.input_shape, schedule=w["schedule"],
                                 weight=w["weight"], split_epochs=w["split_epochs"])
        adversarial = None
        if config["adversarial"]["enabled"]:
            from attest.defenses import adversarial as adv_mod

            adversarial = adv_mod.create(session, config["adversarial"], seed=config["training"]["seed"])
        radio = None
        if config["radioactive"]["enabled"]:
            from attest.defenses import radioactive

            radio = radioactive.create(session, config["radioactive"], model, train_set)
        trainer = Trainer(model, radio.train if radio else train_set, config, mark, progress, adversarial)
        module = trainer.run()

        dp_claim = None
        if trainer.dp:
            import opacus

            from attest.defenses.dp import dp_note

            split = bool(mark and mark.schedule == "split")
            is_ewe = mark is not None and mark.claim()["scheme"] in EWE_SCHEMES
            note = dp_note(opacus_version=opacus.__version__, watermark=mark.schedule if mark else None,
                           split_records=trainer.split_records, split_epochs=mark.split_epochs if split else 0,
                           start=start_claim["kind"], ewe_records=len(mark.y) if is_ewe else 0)
            if radio is not None:
                note += (" Radioactive data: the marks come from a marking network trained without "
                         "DP on the train split, which this epsilon does not cover.")
            dp_claim = trainer.dp.claim(tight=not split and start_claim["kind"] == "random"
                                        and not is_ewe and radio is None, note=note,
                                        non_dp_records=trainer.split_records)
        session.measure_dp(dp_claim)
        session.measure_watermark(mark.claim() if mark else None)

        model_path = out_dir / MODEL_NAME
        diff = export.export_checked(module, test_set.x, model_path)
        predict = _onnx_predictor(model_path)
        if adversarial is not None:
            session.measure_adversarial(adversarial.measure(module, test_set, predict, out_dir))
        if radio is not None:
            session.measure_radioactive(radio.measure(module, test_set, model_path))
            radio.save(out_dir)
        evaluation = evaluate(predict, test_set, mark)
        session.measure_evaluation(evaluation)
        session.measure_model({**model_claim(model_path, config["name"]), "preprocessing": prep})
        # The opening is saved before the card exists: a card whose opening was lost
        # would commit to a watermark nobody can ever reveal.
        opening_path = mark.opening.save(out_dir / OPENING_NAME) if mark else None
        card_bytes = session.seal()
        paths = session.write(out_dir, card_bytes)
    finally:
        if owned:
            backend.close()

    write_atomic(out_dir / PUBLIC_KEY_NAME, keys.public_pem(signing_key))
    wmtext = f", watermark accuracy {evaluation['watermark_accuracy']:.3f}" if mark else ""
    dptext = f", epsilon {dp_claim['epsilon']:.2f}" if dp_claim else ""
    adv = session.claims["defenses"].get("adversarial")
    dptext += f", adversarial accuracy {adv['adversarial_accuracy']:.3f}" if adv else ""
    rad = session.claims["defenses"].get("radioactive")
    dptext += (f", radioactive p-value {rad['p_value']:.2g} (loss difference "
               f"{rad['loss_difference']:.3f})") if rad else ""
    progress(f"test accuracy {evaluation['accuracy']:.3f}{wmtext}{dptext}; onnx matches torch "
             f"within {diff:.1e}; sealed in {time.monotonic() - started:.1f} s")
    return TrainResult(out_dir=out_dir, card_path=paths.cbor, model_path=model_path,
                       opening_path=opening_path, card_bytes=card_bytes, claims=session.claims)


def train_from_config(config_path, out_dir, *, progress=None, **overrides) -> TrainResult:
    """`laminate train`: load and check the config and data, build the model, train.

    `overrides` are dotted config keys (e.g. `**{"training.epochs": 2}`) or `backend`,
    `release_key`, `entry_point`.
    """
    passthrough = {k: overrides.pop(k) for k in ("backend", "release_key", "entry_point") if k in overrides}
    config = load_config(config_path)
    if overrides:
        config = config.with_overrides(**overrides)
    full = ds.load_from_config(config)
    train_set, test_set = ds.split(full, config["dataset"]["test_fraction"], config["dataset"]["split_seed"])
    from attest.models import build

    torch.manual_seed(config["training"]["seed"])
    model = build(config["model"]["arch"], full.input_shape, full.classes, config["model"]["hidden"])
    start = config.start()
    if start["weights"] is not None:
        from attest.start import load_weights

        load_weights(model, start["weights"])
    return train(model, train_set, test_set, config, out_dir=out_dir, progress=progress,
                 start=start["kind"], parent_card=start["parent_card"], **passthrough)

