"""Where the initial weights came from: the card's `start`, measured before training.

Without it a card says nothing about weights handed in: a model pre-trained without DP
on the test set, or a victim's stolen weights "trained" at a learning rate of 1e-300,
would get a card as genuine as a fresh run's. So the wrapper either draws the initial
weights itself from the attestation module's randomness (`random`), or measures what it
was handed by digest: a released model whose card is named (`parent`, lineage) or any
other weights (`external`). Both digests are recorded: the state_dict's canonical
digest, and the digest of the ONNX file the wrapper exports from those weights, which
is the digest a registry logs for a released model.
"""
from __future__ import annotations

from pathlib import Path

import torch

from attest import export
from attest.measure import file_sha256, state_dict_sha256
from cards.card import card_digest, open_card
from cards.errors import LaminateError

KINDS = ("random", "parent", "external")
INIT = "torch.nn.Module.reset_parameters"
SEED_BYTES = 32


def random_init(model: torch.nn.Module, seed: bytes) -> None:
    """Re-draw every parameter with its layer's own initialiser from `seed`; refuse a
    model with a parameter no initialiser covers (it would keep handed-in values)."""
    covered = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int.from_bytes(seed[:8], "big"))
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in module.parameters(recurse=False))
    stray = [name for name, p in model.named_parameters() if id(p) not in covered]
    if stray:
        raise LaminateError(f"start: random: parameter {stray[0]!r} has no reset_parameters "
                            "initialiser; pass the weights as an external start instead")


def check(kind, parent_card) -> None:
    """Refuse a start the caller got wrong, before anything is measured."""
    if kind not in KINDS:
        raise LaminateError(f"start: expected one of {', '.join(KINDS)}, got {kind!r}")
    if (kind == "parent") != (parent_card is not None):
        raise LaminateError("start: a parent start needs the parent's card, and only it")


def measure(session, model: torch.nn.Module, *, kind: str, parent_card, example,
            work_dir: Path) -> dict:
    """Initialise (kind `random`) or digest (`parent`, `external`) the weights; the claim."""
    check(kind, parent_card)
    if kind == "random":
        seed = session.random(SEED_BYTES)
        random_init(model, seed)
        return {"kind": "random", "seed": seed.hex(), "init": f"{INIT} (torch {torch.__version__})",
                "sha256": state_dict_sha256(model.state_dict())}
    path, mode = Path(work_dir) / "start.onnx", model.training
    try:
        export.export_onnx(model, example, path)      # puts the model in eval mode
        model_sha256 = file_sha256(path)
    finally:
        path.unlink(missing_ok=True)
        model.train(mode)
    claim = {"kind": kind, "model_sha256": model_sha256,
             "sha256": state_dict_sha256(model.state_dict())}
    if kind == "parent":
        card_bytes = parent_card if isinstance(parent_card, bytes) else _read(parent_card)
        parent_model = open_card(card_bytes).claims["model"]["sha256"]
        if parent_model != model_sha256:
            raise LaminateError(f"start: the initial weights export to {model_sha256[:16]}..., "
                                f"the parent card's model is {parent_model[:16]}...")
        claim = {"kind": "parent", "card_sha256": card_digest(card_bytes),
                 "model_sha256": model_sha256, "sha256": claim["sha256"]}
    return claim


def load_weights(model: torch.nn.Module, path) -> None:
    """Load a state_dict file (tensors only: no pickled code runs) into `model`. A file
    more than twice the size of the model's own tensors (plus 1 MiB of framing) is refused
    before it is read: it cannot be this model's state_dict, and reading it is unbounded."""
    import pickle

    tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise LaminateError(f"{path}: model.weights: cannot read it ({exc.strerror})") from None
    if size > 2 * tensors + (1 << 20):
        raise LaminateError(f"{path}: model.weights: {size} bytes, more than twice this "
                            f"model's {tensors} bytes of tensors: not a state_dict for this model")
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, AttributeError, EOFError,
            pickle.UnpicklingError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise LaminateError(f"{path}: model.weights: not a state_dict for this model "
                            f"({type(exc).__name__}: {first})") from None


def _read(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise LaminateError(f"{path}: cannot read the parent card: {exc.strerror}") from None
