"""The attested session: measurements become events in the backend, then a sealed card.

The order is fixed and enforced (FORMAT.md, "Events and registers"): the wrapper's code
identity is measured first into its own register, so everything after it is vouched
for by code a verifier can pin; each section is measured once and cannot be revisited
once a later one is in the log.
"""
import importlib.metadata
import sys
from pathlib import Path
from typing import NamedTuple

from cards import card as cardlib
from cards import schema, views
from cards.errors import LaminateError
from cards.files import write_atomic

CODE_REGISTER = 16
DATA_REGISTER = 23
REGISTERS = [CODE_REGISTER, DATA_REGISTER]

# (event type, register, may be absent), in the order FORMAT.md fixes.
ORDER = tuple((spec.type, spec.register, spec.optional) for spec in schema.EVENT_CLAIMS.values())
_FRAMEWORKS = ("torch", "opacus", "onnx", "onnxruntime", "numpy")


class CardFiles(NamedTuple):
    cbor: Path
    yaml: Path
    md: Path


def framework_versions() -> dict:
    """laminate's version plus those of the ML libraries this process actually loaded."""
    versions = {"laminate": importlib.metadata.version("laminate")}
    for name in _FRAMEWORKS:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        if isinstance(version, str):
            versions[name] = version.split("+")[0] if name == "torch" else version
    return versions


class AttestedSession:
    """Measures one training run into `backend` and seals the card with `release_key`."""

    def __init__(self, backend, release_key, *, framework=None):
        self.backend = backend
        self.release_key = release_key
        self.framework = dict(framework) if framework is not None else None
        self.events = []
        self.sections = {}
        self.claims = None
        self.evidence = None
        self._next = 0
        backend.start(list(REGISTERS))

    def random(self, n: int) -> bytes:
        """Randomness from the attestation module (watermark seeds come from here)."""
        return self.backend.random(n)

    def _measure(self, event_type: str, data) -> None:
        if self.claims is not None:
            raise LaminateError(f"attested session: {event_type} measured after the card was sealed")
        position = next(i for i, (t, _, _) in enumerate(ORDER) if t == event_type)
        if position < self._next:
            raise LaminateError(f"attested session: {event_type} measured twice or after "
                                f"{ORDER[self._next - 1][0]}")
        for skipped, _, optional in ORDER[self._next:position]:
            if not optional:
                raise LaminateError(f"attested session: {event_type} measured before {skipped}")
            self.sections.setdefault(skipped, None)
        self._next = position + 1
        self.sections[event_type] = data
        if data is None:
            return
        event = schema.make_event(event_type, data, ORDER[position][1])
        self.backend.extend(event)
        self.events.append(event)

    def measure_code(self, claim: dict) -> None:
        self._measure("code", claim)

    def measure_config(self, claim: dict) -> None:
        """`claim` is {"config": ..., "config_sha256": ...} (see measure.config_claim)."""
        self._measure("config", claim)

    def measure_dataset(self, split: str, claim: dict) -> None:
        if split not in ("train", "test"):
            raise LaminateError(f"attested session: dataset split must be train or test, got {split!r}")
        self._measure(f"dataset.{split}", claim)

    def measure_start(self, claim: dict) -> None:
        """Where the initial weights came from (attest.start), before any training."""
        self._measure("start", claim)

    def measure_dp(self, claim) -> None:
        """None records that training used no DP (the claim section is null, no event)."""
        self._measure("defense.dp", claim)

    def measure_watermark(self, claim) -> None:
        self._measure("defense.watermark", claim)

    def measure_distributed(self, claim) -> None:
        """The ranks' shard measurements and feeds (attest.distributed); None for one process."""
        self._measure("distributed", claim)

    def measure_adversarial(self, claim) -> None:
        """None: no adversarial training (the claim section is left out, no event)."""
        self._measure("defense.adversarial", claim)

    def measure_radioactive(self, claim) -> None:
        """None: no radioactive data (the claim section is left out, no event)."""
        self._measure("defense.radioactive", claim)

    def measure_evaluation(self, claim: dict) -> None:
        self._measure("evaluation", claim)

    def measure_model(self, claim: dict) -> None:
        self._measure("model", claim)

    def build_claims(self) -> dict:
        """The claims object the measured sections add up to."""
        if self._next < len(ORDER):
            raise LaminateError(f"attested session: cannot seal before {ORDER[self._next][0]} "
                                "is measured")
        s = self.sections
        config = s["config"]
        claims = {
            "model": s["model"],
            "dataset": {"train": s["dataset.train"], "test": s["dataset.test"]},
            "start": s["start"],
            "training": {
                "config": config["config"],
                "config_sha256": config["config_sha256"],
                "code": s["code"],
                "framework": self.framework if self.framework is not None
                else framework_versions(),
            },
            "defenses": {"dp": s["defense.dp"], "watermark": s["defense.watermark"],
                         **({"adversarial": s["defense.adversarial"]}
                            if s.get("defense.adversarial") else {}),
                         **({"radioactive": s["defense.radioactive"]}
                            if s.get("defense.radioactive") else {})},
            "evaluation": s["evaluation"],
        }
        if s.get("distributed") is not None:
            claims["training"]["distributed"] = s["distributed"]
        return claims

    def seal(self) -> bytes:
        """Quote over H(dcbor(claims)) and sign the card; the session is closed after."""
        claims = self.build_claims()
        evidence = self.backend.quote(schema.claims_digest(claims))
        evidence["event_log"] = [dict(event) for event in self.events]
        card_bytes = cardlib.seal(claims, evidence, self.release_key)
        self.claims, self.evidence = claims, evidence
        return card_bytes

    def write(self, out_dir, card_bytes: bytes) -> CardFiles:
        """card.cbor plus the YAML and Markdown views generated from the same payload."""
        return write_card(out_dir, card_bytes)


def make_out_dir(path) -> Path:
    """Create an output directory up front, so a bad --out fails before any training."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LaminateError(f"{out}: cannot create the output directory: {exc.strerror}") from None
    return out


def write_card(out_dir, card_bytes: bytes) -> CardFiles:
    """Write a card and its views; the views are for people, never parsed for trust."""
    out = make_out_dir(out_dir)
    payload = cardlib.open_card(card_bytes).payload
    files = CardFiles(out / "card.cbor", out / "card.yaml", out / "card.md")
    write_atomic(files.cbor, card_bytes)
    write_atomic(files.yaml, views.to_yaml(payload).encode("utf-8"))
    write_atomic(files.md, views.to_markdown(payload).encode("utf-8"))
    return files
