"""`laminate tpm enroll|info`: certify a TPM's attestation key with a registrar CA.

`tpm enroll` runs the registrar on the TPM host itself: the registrar's side
(verifier.tpm_trust, no TPM stack) and the TPM's side (attest.tpm_backend) exchange the
three enrollment messages in one process. That is the deployment where whoever runs the
registrar CA vouches for this host; a remote registrar runs the same exchange over a network.
It lives here, in the composition root, because it needs both the prover and the verifier.
"""
from pathlib import Path

from cards.errors import LaminateError

REGISTRAR_CA = "registrar-ca.pem"
REGISTRAR_KEY = "registrar-ca-key.pem"
REGISTRAR_EK_ROOTS = "ek-roots.pem"


def register(sub) -> None:
    tpm = sub.add_parser(
        "tpm", help="enroll a TPM's attestation key and inspect it",
        description="A card from the tpm backend is trusted through two roots: the TPM "
        "manufacturer's EK root (the EK certificate) and a registrar CA that certified the "
        "attestation key (AK) after checking, by credential activation, that it lives in the "
        "TPM holding that EK. Enroll once per TPM before `laminate train --backend tpm`. The "
        "enrollment record is kept in $LAMINATE_TPM_DIR, else $LAMINATE_HOME/tpm, else "
        "~/.local/share/laminate/tpm.")
    tpm_sub = tpm.add_subparsers(dest="tpm_command", metavar="{enroll,info}", required=True)
    enroll = tpm_sub.add_parser(
        "enroll", help="certify this TPM's attestation key with a registrar CA",
        description="Check the EK certificate against the EK roots, challenge the TPM by "
        "credential activation and issue an AK certificate from the registrar CA in "
        "--registrar-dir (created on first use). Print the registrar CA a policy must trust.")
    tpm_info = tpm_sub.add_parser("info", help="show the TPM's EK certificate, AK and enrollment")
    for p in (enroll, tpm_info):
        p.add_argument("--tpm", metavar="TCTI", required=True,
                       help="TPM TCTI string, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321")
    enroll.add_argument("--registrar-dir", metavar="DIR", required=True,
                        help=f"registrar state: {REGISTRAR_CA} (trusted by policies), {REGISTRAR_KEY} "
                        f"(secret, 0600) and {REGISTRAR_EK_ROOTS} (the EK roots it accepts)")
    enroll.add_argument("--ek-root", metavar="PEM", action="append", default=[],
                        help="a TPM manufacturer root CA the registrar accepts EK certificates "
                        "from; remembered in DIR (repeatable)")
    enroll.add_argument("--ek-issuer", metavar="PEM", action="append", default=[],
                        help="an intermediate CA between the EK certificate and its root; "
                        "cards carry it (repeatable)")
    enroll.set_defaults(func=run_tpm_enroll)
    tpm_info.set_defaults(func=run_tpm_info)


def _read_certs(path, what: str) -> list:
    """The PEM certificates in `path` (one or more), or a one-line error naming it."""
    from cryptography import x509

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LaminateError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise LaminateError(f"{path}: {what}: expected PEM certificate(s)")
    return certs


def _pem(certs) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def _registrar(directory: Path, new_roots: list):
    """Load the registrar CA in `directory`, creating it on first use, and add EK roots.

    Returns (registrar, created, CA certificate path, roots file path). The EK roots it
    accepts are kept next to its key (by the caller, once an enrollment succeeded) so
    later enrollments need no --ek-root.
    """
    from cards import keys
    from verifier.tpm_trust import Registrar

    ca_path, key_path, roots_path = (directory / n for n in (REGISTRAR_CA, REGISTRAR_KEY, REGISTRAR_EK_ROOTS))
    roots = _read_certs(roots_path, "registrar EK roots") if roots_path.exists() else []
    roots += [c for c in new_roots if c not in roots]
    if not roots:
        raise LaminateError(f"{directory}: the registrar trusts no EK root yet; pass --ek-root PEM "
                            "(the TPM manufacturer's root CA)")
    present = [p.exists() for p in (ca_path, key_path)]
    if any(present) and not all(present):
        missing = ca_path if not present[0] else key_path
        raise LaminateError(f"{missing}: missing while the other half of the registrar CA exists; "
                            "restore it or use a new --registrar-dir")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if all(present):
            key = keys.load_private_key(key_path)
            cert = _read_certs(ca_path, "registrar CA certificate")[0]
            if keys.spki_der(cert.public_key()) != keys.spki_der(key):
                raise LaminateError(f"{ca_path}: does not match {key_path}")
            registrar = Registrar(key, cert, roots)
        else:
            registrar = Registrar.create(roots)
            keys.save_private_key(registrar.ca_key, key_path)
            ca_path.write_bytes(registrar.ca_pem)
    except OSError as exc:
        raise LaminateError(f"{exc.filename or directory}: cannot write registrar state: "
                            f"{exc.strerror or exc}") from None
    return registrar, not all(present), ca_path, roots_path


def _open_tpm(tcti: str):
    from attest.tpm_backend import TpmBackend

    return TpmBackend(tcti, require_enrollment=False)


def run_tpm_enroll(args) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from attest.tpm_backend import enroll
    from verifier.tpm_trust import verify_chain

    new_roots = [c for path in args.ek_root for c in _read_certs(path, "EK root")]
    issuers = [c for path in args.ek_issuer for c in _read_certs(path, "EK issuer")]
    directory = Path(args.registrar_dir).expanduser()
    registrar, created, ca_path, roots_path = _registrar(directory, new_roots)
    backend = _open_tpm(args.tpm)
    try:
        record = enroll(backend, registrar, [c.public_bytes(Encoding.DER) for c in issuers])
        ak_name, ek_cert = backend.ak_name.hex(), x509.load_der_x509_certificate(backend.ek_cert)
    finally:
        backend.close()
    roots_path.write_bytes(_pem(registrar.ek_roots))
    ek_root = next(r for r in registrar.ek_roots if verify_chain(ek_cert, issuers, [r]) is None)
    print(f"registrar CA {'created' if created else 'reused'}: {ca_path}")
    print(f"attestation key {ak_name} enrolled (credential activation); record: {record}")
    print(f"EK certificate chains to: {ek_root.subject.rfc4514_string()} (kept in {roots_path})")
    print(f"a policy trusting this TPM's cards lists both in trusted_roots: that EK root "
          f"and {ca_path.resolve()}")
    return 0


def run_tpm_info(args) -> int:
    from cryptography import x509

    backend = _open_tpm(args.tpm)
    try:
        if backend.ek_cert:
            ek = x509.load_der_x509_certificate(backend.ek_cert)
            print(f"EK certificate:  subject {ek.subject.rfc4514_string() or '(empty)'}")
            print(f"                 issuer  {ek.issuer.rfc4514_string()}")
        else:
            print("EK certificate:  none in NV (this TPM cannot be enrolled)")
        print(f"AK name:         {backend.ak_name.hex()}")
        record = backend.enrollment()
        if record is None:
            print(f"enrolled:        no (no {backend.enrollment_path}; run `laminate tpm enroll`)")
        else:
            ak_cert = x509.load_der_x509_certificate(record["ak_certificate"])
            print(f"enrolled:        yes, AK certificate issued by {ak_cert.issuer.rfc4514_string()}, "
                  f"valid until {ak_cert.not_valid_after_utc:%Y-%m-%d}")
            print(f"                 record {backend.enrollment_path}")
    finally:
        backend.close()
    return 0
