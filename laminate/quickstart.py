"""`laminate quickstart`: the whole product in one run, on the simulator, in about a minute.

It plays the three users in turn. The provider trains a small network on the digits
dataset with DP-SGD and a watermark and seals a card. The deployer verifies that card
against a policy written for this run. The arbiter runs the ownership test on the
released model (the owner's claim must succeed) and on a model someone else trained
without the watermark (the claim must fail). Everything it made stays in the output
folder, so the commands it prints at the end can be rerun by hand.

The watermark uses the split schedule: DP-SGD alone destroys a trigger-set watermark
(Szyller and Asokan, AAAI 2023: 0.97 -> 0.30 on MNIST at eps 3), which would leave the owner unable to
prove anything. Adding a non-DP watermark phase after the DP phase restores it, at a
price the card states: the epsilon bound no longer covers the released model
(`privacy_accounting: not tight`), and the verifier warns about it.
"""
import json
import time
from pathlib import Path

CONFIG = """\
# Written by `laminate quickstart`; rerun with `laminate train {dir}/config.yaml --out DIR`.
name: quickstart-digits
dataset:
  name: digits
  test_fraction: 0.2
  split_seed: 0
model:
  arch: mlp
  hidden: [64]
training:
  epochs: {epochs}
  batch_size: 64
  lr: 0.5
  optimizer: sgd
  seed: 0
dp:
  enabled: true
  target_epsilon: 3.0
  max_grad_norm: 1.0
  delta: 1.0e-5
watermark:
  enabled: true
  trigger_count: 100
  # DP-SGD alone would wash the watermark out; a non-DP phase after it keeps it provable.
  schedule: split
  split_epochs: {split_epochs}
attestation:
  backend: sim
  sim_dir: {sim_dir}
release_key: {release_key}
"""

POLICY = """\
# Written by `laminate quickstart` for this run only.
policy_id: quickstart
# The quickstart runs on the software simulator, which proves nothing about hardware.
# A real deployment policy allows only `tpm` and trusts a real vendor root.
allow_backends: [sim]
trusted_roots:
  - sim-root.pem            # this run's simulated device root (a test root)
trusted_release_keys:
  - release-public.pem      # this run's release key
reference_values:
  code:
    - "{code}"              # the wrapper code identity of this installation
ownership:
  alpha: 1.0e-6
  min_power: 0.9
"""


def register(sub) -> None:
    parser = sub.add_parser(
        "quickstart", help="train, seal, verify and test ownership end to end on the simulator",
        description="Train a small digits classifier with DP-SGD and a watermark on the "
        "simulated attestation device, seal its card, verify it, and run the ownership test "
        "on the released model and on an independently trained one. Leaves the model, the "
        "card, the secret watermark opening, the release key and a policy in --out.")
    parser.add_argument("--out", type=Path, default=Path("laminate-quickstart"),
                        help="output folder (default ./laminate-quickstart)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="DP-SGD epochs on real data (default 10)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from attest.session import make_out_dir
    from cards.errors import LaminateError

    if args.epochs < 1:
        raise LaminateError(f"--epochs: must be at least 1, got {args.epochs}")
    started = time.perf_counter()
    out = make_out_dir(args.out.resolve())

    print(f"[1/4] provider: training with DP-SGD (eps 3) and a watermark, simulator backend -> {out}")
    code = _code_identity()
    trained = _train(out, args.epochs)
    claims = trained.claims
    dp, wm, ev = claims["defenses"]["dp"], claims["defenses"]["watermark"], claims["evaluation"]
    print(f"      test accuracy {ev['accuracy']:.3f}, watermark accuracy "
          f"{ev['watermark_accuracy']:.3f} on {wm['trigger_count']} triggers")
    print(f"      cost of the split schedule: DP-SGD gave eps {dp['epsilon']:.2f} "
          f"(delta {dp['delta']:g}) for the DP phase only; the non-DP watermark phase that "
          f"followed also saw real data, so that bound does not cover the released model "
          f"(privacy_accounting: {dp['privacy_accounting']})")
    print("      (the alternative, watermark triggers inside DP-SGD, keeps the bound tight but "
          "leaves the watermark near chance: published MNIST figures fall 0.97 -> 0.30)")

    print("[2/4] deployer: verifying the card against policy.yaml")
    verification = _verify(out, trained, code)
    for check in verification.checks:
        if check.status != "affirming":
            print(f"      {check.status}: {check.check}: {check.reason}")
    print(f"      card verification: {verification.status} (exit {verification.exit_code})")

    print("[3/4] arbiter: ownership test on the released model (the owner's claim)")
    positive = _ownership(out, trained, out / "model.onnx")
    print("      " + positive.to_text().replace("\n", "\n      "))

    print("[4/4] arbiter: ownership test on an independently trained model (no watermark)")
    independent = _train_independent(out)
    negative = _ownership(out, trained, independent)
    print("      " + negative.to_text().replace("\n", "\n      "))

    ok = verification.exit_code == 0 and positive.shown and not negative.shown
    print(f"\n{'done' if ok else 'FAILED'} in {time.perf_counter() - started:.0f} s. "
          f"Files in {out}: model.onnx, card.cbor/.yaml/.md, watermark.opening (secret), "
          "release-public.pem, policy.yaml. Try:")
    print(f"  laminate verify {out}/card.cbor --model {out}/model.onnx --policy {out}/policy.yaml")
    print(f"  laminate ownership --card {out}/card.cbor --opening {out}/watermark.opening "
          f"--suspect {out}/model.onnx")
    return 0 if ok else 1


def _train(out: Path, epochs: int):
    """Train through the attested wrapper with this run's own key and simulated device."""
    import torch

    from attest.train import train_from_config
    from cards import keys

    torch.set_num_threads(min(2, torch.get_num_threads()))
    key_path = out / "release-ed25519.pem"
    if not key_path.exists():
        keys.save_private_key(keys.generate_private_key("ed25519"), key_path)
    config = out / "config.yaml"
    # JSON strings are YAML scalars: a folder name with ": " or " #" stays one path.
    config.write_text(CONFIG.format(dir=out, epochs=epochs, split_epochs=epochs,
                                    sim_dir=json.dumps(str(out / "sim")),
                                    release_key=json.dumps(str(key_path))))
    return train_from_config(config, out)


def _code_identity() -> str:
    """The wrapper code identity of this installation, computed here independently of any
    card, as a deployer pins the release it reviewed."""
    from attest.measure import code_claim

    return code_claim()["wrapper_sha256"]


def _verify(out: Path, trained, code: str):
    """Write policy.yaml trusting this run's key, device root and code, then appraise."""
    from enclave_sim.device import SimDevice
    from verifier.appraise import appraise
    from verifier.policy import Policy

    (out / "sim-root.pem").write_bytes(SimDevice(out / "sim").root_certificate_pem())
    (out / "policy.yaml").write_text(POLICY.format(code=code))
    policy = Policy.load(out / "policy.yaml")
    return appraise(trained.card_bytes, policy=policy, model_path=trained.model_path)


def _ownership(out: Path, trained, suspect_path: Path):
    from cards.watermark import Opening
    from verifier.ownership import ownership_test
    from verifier.suspect import OnnxSuspect

    opening = Opening.load(trained.opening_path)
    watermark = trained.claims["defenses"]["watermark"]
    return ownership_test(opening, watermark, OnnxSuspect(suspect_path), alpha=1e-6)


def _train_independent(out: Path) -> Path:
    """Someone else's digits model, trained only on records the owner never trained on
    (the owner's held-out test split)."""
    from attest.datasets import load_digits, split

    _, theirs = split(load_digits(), 0.2, 0)
    return train_plain(theirs, out / "independent.onnx", seed=12345)


def train_plain(data, path: Path, *, seed: int, epochs: int = 30, hidden=(64,)) -> Path:
    """A plain torch MLP (no wrapper, no watermark) trained on ``data`` and exported to
    ONNX: the independent model an ownership claim must fail against."""
    import numpy as np
    import torch

    from attest.export import export_onnx
    from attest.models import mlp

    torch.manual_seed(seed)
    model = mlp(data.input_shape, data.classes, list(hidden))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in torch.randperm(len(y), generator=generator).split(32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    return export_onnx(model.eval(), np.asarray(data.x[:2]), path)
