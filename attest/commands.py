"""Prover-side subcommands: `laminate train` and `laminate sim init|info`.

torch is imported inside the train command only, so `laminate --help` and every
verifier command start without it.
"""
import hashlib
from pathlib import Path

from cards.errors import LaminateError

SIM_NOTICE = ("SIMULATED hardware: this device's keys live in a local directory; its cards "
              "prove nothing to anyone else, and default policies reject them.")


def register(sub) -> None:
    train = sub.add_parser(
        "train", help="train through the attested wrapper and seal a property card",
        description="Measure the code, config and data, train (optionally with DP-SGD and a "
        "watermark), export ONNX and seal card.cbor/card.yaml/card.md next to model.onnx. "
        "Config keys are documented in attest/examples/digits.yaml.")
    train.add_argument("config", help="training config (YAML)")
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--backend", choices=("sim", "tpm", "tdx", "snp"), help="attestation backend (overrides the config)")
    train.add_argument("--tpm", metavar="TCTI", help="TPM TCTI string, e.g. swtpm:port=2321")
    train.add_argument("--release-key", metavar="PEM", help="private key that signs the card")
    train.add_argument("--epochs", type=int, help="override training.epochs")
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="train with N data-parallel processes on this machine (torchrun, "
                       "gloo, on CPU); each measures its shard, rank 0 seals. "
                       "Under torchrun (several machines) every rank joins by itself")
    train.set_defaults(func=run_train)

    sim = sub.add_parser("sim", help="the simulated attestation device (tests and demos only)",
                         description=SIM_NOTICE)
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="{init,info}", required=True)
    init = sim_sub.add_parser("init", help="create the simulated device (idempotent)")
    info = sim_sub.add_parser("info", help="show the simulated device's identity")
    for p in (init, info):
        p.add_argument("--dir", help="state directory (default $LAMINATE_SIM_DIR or "
                       "~/.local/share/laminate/sim)")
        p.add_argument("--root-out", metavar="PEM", help="also write the device's root certificate here")
    init.set_defaults(func=run_sim_init)
    info.set_defaults(func=run_sim_info)


def run_train(args) -> int:
    from attest import distributed
    from attest.train import train_from_config

    if args.nproc < 1:
        raise LaminateError(f"--nproc: expected a positive number of processes, got {args.nproc}")
    if args.nproc > 1 and not distributed.in_job():
        from attest.config import load_config

        try:                                      # fail here, not in every rank
            distributed.check_config(load_config(args.config))
        except LaminateError as exc:
            message = str(exc)
            raise LaminateError(message if message.startswith(str(args.config))
                                else f"{args.config}: {message}") from None
        forwarded = [f"--{name.replace('_', '-')}={value}" for name, value in
                     (("backend", args.backend), ("tpm", args.tpm), ("release_key", args.release_key),
                      ("epochs", args.epochs)) if value is not None]
        return distributed.launch(args.config, args.out, args.nproc, forwarded)
    overrides = {}
    if args.backend:
        overrides["attestation.backend"] = args.backend
    if args.tpm:
        overrides["attestation.tpm"] = args.tpm
    if args.release_key:
        overrides["release_key"] = str(Path(args.release_key).resolve())
    if args.epochs is not None:
        overrides["training.epochs"] = args.epochs
    if distributed.in_job():
        result = distributed.run_from_config(args.config, args.out, **overrides)
        if result is None:      # not rank 0: rank 0 reports
            return 0
    else:
        result = train_from_config(args.config, args.out, **overrides)
    out = result.out_dir
    print(f"wrote {result.model_path}, {result.card_path}, {out / 'card.yaml'}, {out / 'card.md'}, "
          f"{out / 'release-public.pem'}")
    if result.opening_path:
        print(f"wrote {result.opening_path} (secret: it proves ownership; keep it away from the model)")
    if result.claims["defenses"]["dp"] and result.claims["defenses"]["dp"]["privacy_accounting"] != "tight":
        print("note: privacy accounting is not tight (a non-DP phase followed); the card says so")
    from cards.card import open_card

    if open_card(result.card_bytes).simulated:
        print(SIM_NOTICE)
    print(f"verify: laminate verify {result.card_path} --model {result.model_path} --policy POLICY.yaml")
    return 0


def _device(directory, *, create: bool):
    from enclave_sim.device import SimDevice, SimDeviceError, default_state_dir

    state = Path(directory).expanduser() if directory else default_state_dir()
    existed = state.is_dir() and any(state.iterdir())
    if not existed and not create:
        raise LaminateError(f"{state}: no simulated device here; run `laminate sim init` first")
    try:
        return SimDevice(state), existed
    except SimDeviceError as exc:
        raise LaminateError(str(exc)) from None


def _show(device, args) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    root_pem = device.root_certificate_pem()
    root_der = x509.load_pem_x509_certificate(root_pem).public_bytes(serialization.Encoding.DER)
    print(f"device id:        {device.device_id}")
    print(f"root certificate: sha256 {hashlib.sha256(root_der).hexdigest()}")
    print(f"state directory:  {device.state_dir}")
    if args.root_out:
        try:
            Path(args.root_out).write_bytes(root_pem)
        except OSError as exc:
            raise LaminateError(f"{args.root_out}: cannot write: {exc.strerror}") from None
        print(f"root certificate written to {args.root_out}")
    print(SIM_NOTICE)


def run_sim_init(args) -> int:
    device, existed = _device(args.dir, create=True)
    print("simulated device already existed" if existed else "simulated device created")
    _show(device, args)
    return 0


def run_sim_info(args) -> int:
    device, _ = _device(args.dir, create=False)
    _show(device, args)
    return 0
