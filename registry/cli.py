"""`laminate serve`, `laminate log ...` and `laminate dispute ...`: the arguments, and
the server's process supervision. The log and dispute commands are the HTTP clients in
``registry.client``.
"""
from __future__ import annotations

import os
import secrets
import sys

from cards.errors import LaminateError

from .client import (
    cmd_dispute_open,
    cmd_dispute_show,
    cmd_log_attach,
    cmd_log_consistency,
    cmd_log_submit,
    cmd_log_tree_head,
    cmd_log_verify,
)
from .witness_cli import add_pins, cmd_log_checkpoint, cmd_log_note_key, cmd_log_witness


def _env(name, default=None):
    return os.environ.get(name) or default


def register(sub) -> None:
    serve = sub.add_parser(
        "serve", help="run the property-card service (registry, transparency log, disputes)",
        description="Run the HTTP service. Every option also comes from the environment "
                    "variable named in its help; options win over the environment.")
    serve.add_argument("--host", default=_env("LAMINATE_HOST", "127.0.0.1"),
                       help="bind address [LAMINATE_HOST, default 127.0.0.1]")
    serve.add_argument("--port", type=int, default=int(_env("LAMINATE_PORT", "8000")),
                       help="port [LAMINATE_PORT, default 8000]")
    serve.add_argument("--database", default=_env("LAMINATE_DATABASE_URL"),
                       help="SQLAlchemy URL [LAMINATE_DATABASE_URL, default "
                            "sqlite:///./laminate.sqlite; PostgreSQL: "
                            "postgresql+psycopg://user@host/db]")
    serve.add_argument("--policy", default=_env("LAMINATE_POLICY"),
                       help="appraisal policy YAML [LAMINATE_POLICY, default: the built-in "
                            "policy, which rejects simulated hardware]")
    serve.add_argument("--api-token", action="append", default=None,
                       help="bearer token for write endpoints, repeatable [LAMINATE_API_TOKEN, "
                            "comma-separated]; stored hashed. With none at all, one is "
                            "generated on first start and printed once")
    serve.add_argument("--key", default=_env("LAMINATE_SERVICE_KEY"),
                       help="service signing key PEM [LAMINATE_SERVICE_KEY, default: generated "
                            "next to the SQLite file, or in the working directory]; every "
                            "process on one database needs the same key")
    serve.add_argument("--log-key", default=_env("LAMINATE_LOG_KEY"),
                       help="the log's Ed25519 checkpoint (signed-note) key PEM "
                            "[LAMINATE_LOG_KEY, default: generated beside the service key]; "
                            "its verifier key is at GET /v1/log/note-key")
    serve.add_argument("--log-batch-ms", type=float,
                       default=float(_env("LAMINATE_LOG_BATCH_MS", "20")),
                       help="log writes of this process are committed together every this "
                            "many milliseconds [LAMINATE_LOG_BATCH_MS, default 20]")
    serve.add_argument("--log-batch-size", type=int,
                       default=int(_env("LAMINATE_LOG_BATCH_SIZE", "256")),
                       help="... or as soon as this many are waiting "
                            "[LAMINATE_LOG_BATCH_SIZE, default 256]")
    serve.add_argument("--max-upload-mb", type=float,
                       default=float(_env("LAMINATE_MAX_UPLOAD_MB", "64")),
                       help="largest request body [LAMINATE_MAX_UPLOAD_MB, default 64]")
    serve.add_argument("--allow-prediction-urls", action="store_true",
                       default=_env("LAMINATE_ALLOW_PREDICTION_URLS", "") in ("1", "true", "yes"),
                       help="let ownership tests and disputes query suspect prediction URLs "
                            "(the service then makes outbound requests to URLs clients "
                            "choose) [LAMINATE_ALLOW_PREDICTION_URLS=1]")
    serve.add_argument("--workers", type=int, default=int(_env("LAMINATE_WORKERS", "1")),
                       help="uvicorn worker processes [LAMINATE_WORKERS, default 1]")
    serve.set_defaults(func=cmd_serve)

    log = sub.add_parser("log", help="check the service's transparency log",
                         description="Verify receipts offline, fetch signed tree heads, and "
                                     "check that the log only grew (consistency proofs).")
    log_sub = log.add_subparsers(dest="log_command", metavar="COMMAND", required=True)
    verify = log_sub.add_parser("verify", help="prove offline that a card is in the log")
    verify.add_argument("card", help="card.cbor")
    verify.add_argument("--receipt", required=True,
                        help="COSE Receipt file (binary, or the base64 text the service returns)")
    verify.add_argument("--service-key", required=True, help="the service's public key PEM")
    verify.add_argument("--checkpoint", help="also require this cosigned checkpoint "
                                            "(the output of `log checkpoint --out`)")
    add_pins(verify, required=False)
    verify.add_argument("--consistency", help="JSON of GET /v1/log/consistency from the "
                                             "receipt's tree size to the checkpoint's")
    verify.set_defaults(func=cmd_log_verify)

    attach = log_sub.add_parser(
        "attach", help="embed the log's receipt in a card (a transparent statement)",
        description="Check that a COSE Receipt proves the card is in the log, then write the "
                    "card with the receipt in its unprotected header (394): one file that "
                    "`laminate verify --log-key` checks offline. The card's digest (its id "
                    "everywhere) does not change. Without RECEIPT, the receipt is fetched "
                    "from --server.")
    attach.add_argument("card", help="card.cbor (may already carry receipts)")
    attach.add_argument("receipt", nargs="?",
                        help="COSE Receipt file (binary, or the base64 text the service returns)")
    attach.add_argument("--out", required=True, help="write the transparent statement here")
    attach.add_argument("--service-key", help="the service's public key PEM (needed with "
                                              "RECEIPT; recommended with --server)")
    _server_args(attach)
    attach.set_defaults(func=cmd_log_attach)

    submit = log_sub.add_parser("submit", help="register a card with a service")
    submit.add_argument("card", help="card.cbor")
    _server_args(submit, token=True)
    submit.add_argument("--receipt-out", help="write the card's COSE Receipt here")
    submit.set_defaults(func=cmd_log_submit)

    head = log_sub.add_parser("tree-head", help="fetch and check the current signed tree head")
    _server_args(head)
    head.add_argument("--service-key", help="pin the service's public key PEM (recommended)")
    head.add_argument("--out", help="save the tree head JSON here (for `log consistency`)")
    head.set_defaults(func=cmd_log_tree_head)

    cons = log_sub.add_parser("consistency",
                              help="check the log only grew since a saved tree head")
    _server_args(cons)
    cons.add_argument("--since", required=True, help="tree head JSON saved by `log tree-head --out`")
    cons.add_argument("--service-key", required=True, help="the service's public key PEM")
    cons.add_argument("--update", action="store_true", help="save the newer head over --since")
    cons.set_defaults(func=cmd_log_consistency)

    wit = log_sub.add_parser("witness", help="cosign the log's checkpoint if it extends "
                                              "the last one this witness saw")
    _server_args(wit)
    wit.add_argument("--log-key", required=True, metavar="VKEY",
                     help="the log's note verifier key (GET /v1/log/note-key), or a file")
    wit.add_argument("--witness-key", required=True, help="this witness's Ed25519 key PEM")
    wit.add_argument("--name", required=True, help="this witness's note key name")
    wit.add_argument("--state", required=True, help="JSON file of the last checkpoints seen")
    wit.add_argument("--out", help="write the cosigned checkpoint here")
    wit.set_defaults(func=cmd_log_witness)

    cp = log_sub.add_parser(
        "checkpoint", help="fetch the checkpoint and require K witness cosignatures",
        description="Fetch the log's checkpoint, add the cosignatures from witness copies "
                    "(--cosigned), and accept it only if the pinned log key signed it and "
                    "at least --min-witnesses of the pinned --witness keys cosigned it "
                    "(exit 1 otherwise, naming what each witness lacked).")
    _server_args(cp)
    add_pins(cp, required=True)
    cp.add_argument("--cosigned", action="append", default=[],
                    help="a copy cosigned by a witness (`log witness --out`); repeatable")
    cp.add_argument("--out", help="save the checkpoint with every cosignature here")
    cp.set_defaults(func=cmd_log_checkpoint)

    nk = log_sub.add_parser("note-key", help="print the verifier key of an Ed25519 key PEM")
    nk.add_argument("key", help="private key PEM")
    nk.add_argument("--name", required=True, help="the key's note name")
    nk.add_argument("--witness", action="store_true",
                    help="a witness key (cosignature/v1, type 4) rather than a log key")
    nk.set_defaults(func=cmd_log_note_key)

    dispute = sub.add_parser("dispute", help="open or fetch an ownership dispute on a service")
    d_sub = dispute.add_subparsers(dest="dispute_command", metavar="COMMAND", required=True)
    d_open = d_sub.add_parser("open", help="submit claims against a suspect model")
    _server_args(d_open, token=True)
    d_open.add_argument("--suspect", help="suspect ONNX model file")
    d_open.add_argument("--suspect-url", help="suspect prediction URL; the verdict names the "
                                              "URL, never a model digest it cannot prove")
    d_open.add_argument("--claim", action="append", default=[], metavar="CARD_ID=OPENING",
                        help="a claim: registered card id and the watermark opening JSON file; "
                             "repeatable")
    d_open.add_argument("--dawn", metavar="STATE", help="a DAWN claim from a serve-model state "
                        "directory: its serving card, opening and log; the service replays the "
                        "--client's flipped answers under the last head it logged before the suspect")
    d_open.add_argument("--client", action="append", metavar="ID",
                        help="with --dawn: the client account(s) the thief used; repeatable")
    d_open.add_argument("--served-model", metavar="FILE", help="with --dawn: the served model")
    d_open.add_argument("--head", metavar="FILE", help="with --dawn: the anchored head to argue "
                        "from (default: the newest in STATE/anchors/)")
    d_open.add_argument("--service-key", help="check the verdict signature with this key PEM")
    d_open.add_argument("--out", help="write the verdict JSON here")
    d_open.set_defaults(func=cmd_dispute_open)
    d_show = d_sub.add_parser("show", help="fetch a dispute's signed verdict")
    d_show.add_argument("dispute_id")
    _server_args(d_show)
    d_show.add_argument("--service-key", help="check the verdict signature with this key PEM")
    d_show.set_defaults(func=cmd_dispute_show)


def _server_args(parser, *, token=False) -> None:
    parser.add_argument("--server", default=_env("LAMINATE_SERVER", "http://127.0.0.1:8000"),
                        help="service base URL [LAMINATE_SERVER]")
    if token:
        parser.add_argument("--token", default=_env("LAMINATE_API_TOKEN"),
                            help="API token [LAMINATE_API_TOKEN]")


# ---------------------------------------------------------------- serve

def cmd_serve(args) -> int:
    from registry.config import ServiceConfig, check_batching
    from registry.service import Service

    config = ServiceConfig.from_env()
    if args.database:
        config.database_url = args.database
    if args.policy:
        config.policy_path = args.policy
    if args.api_token:
        config.api_tokens = list(args.api_token)
    if args.key:
        config.key_path = args.key
    if args.max_upload_mb <= 0:
        raise LaminateError(f"--max-upload-mb: must be positive, got {args.max_upload_mb}")
    config.max_upload_mb = args.max_upload_mb
    check_batching(args.log_batch_ms / 1000, args.log_batch_size)
    config.log_batch_interval, config.log_batch_size = args.log_batch_ms / 1000, args.log_batch_size
    if args.log_key:
        config.log_key_path = args.log_key
    config.allow_prediction_urls = args.allow_prediction_urls
    if args.workers < 1:
        raise LaminateError(f"--workers: must be at least 1, got {args.workers}")

    # Set up once here (database, key, genesis leaf, tokens) so a mistake is one line
    # and exit 2, and the workers find everything in place.
    service = Service(config)
    if not config.api_tokens and not service.has_tokens():
        token = secrets.token_urlsafe(32)
        service.add_token(token)
        print(f"laminate serve: generated API token (shown once, stored hashed): {token}",
              file=sys.stderr)
    key_path, log_key_path = service.key_path, service.log_key_path
    service.close()
    if service.policy.source == "built-in default policy":
        print("laminate serve: no --policy: the built-in policy rejects simulated hardware",
              file=sys.stderr)
    os.environ.update({
        "LAMINATE_DATABASE_URL": config.database_url,
        "LAMINATE_POLICY": config.policy_path or "",
        "LAMINATE_SERVICE_KEY": str(key_path),
        "LAMINATE_LOG_KEY": str(log_key_path),
        "LAMINATE_LOG_BATCH_MS": str(args.log_batch_ms),
        "LAMINATE_LOG_BATCH_SIZE": str(args.log_batch_size),
        "LAMINATE_MAX_UPLOAD_MB": str(config.max_upload_mb),
        "LAMINATE_ALLOW_PREDICTION_URLS": "1" if config.allow_prediction_urls else "",
        "LAMINATE_API_TOKEN": "",      # already stored hashed in the database
    })
    print(f"laminate serve: http://{args.host}:{args.port}  database {config.database_url}  "
          f"key {key_path}", file=sys.stderr)
    if args.workers == 1:
        _serve_one(args.host, args.port)
        return 0
    return _serve_many(args.host, args.port, args.workers)


def _listening_socket(host: str, port: int):
    """A TCP listening socket created with an explicit IPPROTO_TCP, so asyncio turns
    Nagle off on every accepted connection (uvicorn's own multi-worker socket leaves the
    protocol 0, and every response then waits ~40 ms for a delayed ACK), and with
    SO_REUSEPORT so several worker processes share the port with kernel balancing."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LaminateError(f"--host {host} --port {port}: cannot listen ({exc.strerror or exc})") from None
    sock.listen(2048)
    return sock


def _serve_one(host: str, port: int) -> None:
    import uvicorn

    sock = _listening_socket(host, port)
    # No access log: at log level warning it prints nothing, yet costs every request.
    config = uvicorn.Config("registry.app:app_from_env", factory=True,
                            log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def _serve_worker(host: str, port: int) -> None:
    """A worker that also dies when its parent is killed (even by SIGKILL), so no
    orphan keeps serving a port the operator believes stopped."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    _serve_one(host, port)


def _serve_many(host: str, port: int, workers: int) -> int:
    """Independent worker processes on one port; if one dies, all stop (a supervisor
    such as systemd restarts the service as a whole)."""
    import multiprocessing
    import signal
    from multiprocessing.connection import wait

    _listening_socket(host, port).close()      # fail here, once, on a port in use
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_serve_worker, args=(host, port), daemon=True)
             for _ in range(workers)]

    def stop(_signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    for proc in procs:
        proc.start()
    try:
        wait([p.sentinel for p in procs])
        return max((p.exitcode or 0) for p in procs if p.exitcode is not None)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=10)
