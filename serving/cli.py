"""`laminate serve-model`: answer predictions for a carded model, with receipts and DAWN."""
import argparse
from pathlib import Path

from cards.errors import LaminateError

DESCRIPTION = """\
Serve the model a card measures (its digest is checked first; any other file is refused).

At start the attestation module draws a receipt signing key and, with --dawn, a DAWN key;
a serving card (signed by --release-key, quoted by the module) commits to both and is
written to STATE/serving-card.cbor. Every answer is logged per client in STATE/log.sqlite
and every batch gets a signed receipt (`laminate verify-inference` checks it offline).
With --dawn RATE a keyed fraction RATE of inputs gets a wrong label, the same one every
time; STATE/dawn.opening.json (secret) lets the owner replay a client's flipped queries
against a suspect (`laminate ownership --serving-card`).

With --registry URL the serving card is registered with that card service at start, and
the log's signed head every --anchor-every seconds when it grew (STATE/anchors/): a
dispute over a client's flipped queries needs a head anchored before the suspect was
first seen. Clients may fetch a signed head themselves: GET /v1/log/head.

Clients: --tokens FILE, one "CLIENT_ID TOKEN" per line; they call
POST /v1/predict {"inputs": [...]} with Authorization: Bearer TOKEN."""


def register(sub) -> None:
    p = sub.add_parser("serve-model", help="serve a carded model with receipts and DAWN",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--card", required=True, type=Path, help="the model's card (card.cbor)")
    p.add_argument("--model", required=True, type=Path, help="the model the card measures")
    p.add_argument("--release-key", required=True, type=Path, metavar="PEM",
                   help="the release key that signs the serving card")
    p.add_argument("--tokens", required=True, type=Path, help='client tokens: "CLIENT_ID TOKEN" lines')
    p.add_argument("--state", required=True, type=Path,
                   help="a new, empty deployment directory (serving card, log, DAWN opening)")
    p.add_argument("--dawn", type=float, default=0.0, metavar="RATE",
                   help="fraction of inputs answered with a keyed wrong label (0 to 0.5)")
    p.add_argument("--probabilities", action="store_true", help="answer probabilities too")
    p.add_argument("--backend", choices=("sim", "tpm"), default="sim")
    p.add_argument("--sim-dir", type=Path, help="simulated device directory")
    p.add_argument("--tpm", metavar="TCTI", help="TPM TCTI string")
    p.add_argument("--registry", metavar="URL", help="card service to register the serving "
                   "card and the log's heads with (laminate serve)")
    p.add_argument("--registry-token", metavar="TOKEN", help="write token for --registry "
                   "(or LAMINATE_REGISTRY_TOKEN)")
    p.add_argument("--anchor-every", type=float, default=300.0, metavar="SECONDS",
                   help="seconds between head registrations (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=run)


def prepare(args):
    """Everything but listening: (app, deployment). Separate so tests start no server."""
    from cards import keys
    from serving import deploy
    from serving.app import Server, create_app, load_tokens
    from serving.log import QueryLog

    tokens = load_tokens(args.tokens)
    release_key = keys.load_private_key(args.release_key)
    state = args.state
    if state.exists() and (not state.is_dir() or any(state.iterdir())):
        raise LaminateError(f"{state}: the state directory must be new or empty "
                            "(one deployment, one serving card, one log)")
    state.mkdir(parents=True, exist_ok=True)
    deployment = deploy.start(args.card, args.model, release_key, rate=args.dawn,
                              probabilities=args.probabilities, backend=args.backend,
                              sim_dir=args.sim_dir, tcti=args.tpm, state_dir=state)
    server = Server(deployment, QueryLog(state / "log.sqlite"))
    app = create_app(server, tokens)
    app.state.anchorer = None
    if getattr(args, "registry", None):
        import os

        from serving.anchor import Anchorer

        token = args.registry_token or os.environ.get("LAMINATE_REGISTRY_TOKEN")
        if not token:
            raise LaminateError("--registry-token: required with --registry "
                                "(or set LAMINATE_REGISTRY_TOKEN)")
        if not 1.0 <= args.anchor_every <= 86400.0:
            raise LaminateError("--anchor-every: expected 1 to 86400 seconds")
        app.state.anchorer = Anchorer(server, args.registry, token, args.anchor_every, state)
        app.state.anchorer.register_card()
    return app, deployment


def run(args) -> int:
    import uvicorn

    app, deployment = prepare(args)
    print(f"wrote {args.state / 'serving-card.cbor'} (serving card {deployment.card.digest[:16]}...)")
    if deployment.opening is not None:
        print(f"wrote {args.state / 'dawn.opening.json'} (secret: the DAWN key; keep it)")
    print(f"serving {args.model} (sha256 {deployment.model_sha256[:16]}...) on "
          f"http://{args.host}:{args.port}")
    if app.state.anchorer is not None:
        print(f"registered the serving card with {args.registry}; anchoring the log every "
              f"{args.anchor_every:g} s")
        app.state.anchorer.start()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if app.state.anchorer is not None:
            app.state.anchorer.stop()
            app.state.anchorer.anchor()        # the last answers, before the process ends
    return 0
