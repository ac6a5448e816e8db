"""`laminate log ...` and `laminate dispute ...` against a real service, and the offline
receipt check with one byte tampered."""
import argparse
import hashlib
import json

import httpx
import pytest

from cardkit import make_card
from cards.errors import LaminateError
from registry import cli as cli_service
from servers import start_server
from service_helpers import card_variant, combined_policy, memorizing_model

TOKEN = "cli-token"


def run(*argv) -> int:
    parser = argparse.ArgumentParser(prog="laminate")
    cli_service.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    kit = make_card(base / "kit")
    policy = combined_policy(base / "policy.yaml", [kit])
    server = start_server(base / "svc", database_url=f"sqlite:///{base / 's.sqlite'}",
                          policy_path=policy, tokens=(TOKEN,))
    key_pem = base / "service.pub.pem"
    key_pem.write_text(httpx.get(server.url + "/v1/log/key").json()["public_key_pem"])
    yield {"kit": kit, "server": server, "key": key_pem, "dir": base}
    server.stop()


def test_submit_and_verify_receipt_offline(setup, capsys):
    kit, server, base = setup["kit"], setup["server"], setup["dir"]
    receipt = base / "card.receipt"
    assert run("log", "submit", kit.card_path, "--server", server.url, "--token", TOKEN,
               "--receipt-out", receipt) == 0
    assert "registered: card" in capsys.readouterr().out
    assert run("log", "verify", kit.card_path, "--receipt", receipt,
               "--service-key", setup["key"]) == 0
    assert "in the log" in capsys.readouterr().out
    tampered = base / "tampered.cbor"
    data = bytearray(kit.card_bytes)
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    assert run("log", "verify", tampered, "--receipt", receipt,
               "--service-key", setup["key"]) == 1
    assert "NOT in the log" in capsys.readouterr().out
    with pytest.raises(LaminateError, match="unknown-token|401"):
        run("log", "submit", kit.card_path, "--server", server.url, "--token", "unknown-token")


def test_tree_head_and_consistency(setup, capsys):
    kit, server, base = setup["kit"], setup["server"], setup["dir"]
    head = base / "head.json"
    assert run("log", "tree-head", "--server", server.url, "--service-key", setup["key"],
               "--out", head) == 0
    variant = base / "variant.cbor"
    variant.write_bytes(card_variant(kit, 7))
    assert run("log", "submit", variant, "--server", server.url, "--token", TOKEN) == 0
    assert run("log", "consistency", "--server", server.url, "--since", head,
               "--service-key", setup["key"], "--update") == 0
    assert "append-only" in capsys.readouterr().out
    # A head signed by someone else is refused before any proof is asked for.
    forged = json.loads(head.read_text())
    forged["signed"] = forged["signed"][:-8] + "AAAAAAA="
    head.write_text(json.dumps(forged))
    with pytest.raises(LaminateError):
        run("log", "consistency", "--server", server.url, "--since", head,
            "--service-key", setup["key"])


def test_dispute_open_and_show(setup, capsys):
    kit, server, base = setup["kit"], setup["server"], setup["dir"]
    run("log", "submit", kit.card_path, "--server", server.url, "--token", TOKEN)
    card_id = hashlib.sha256(kit.card_bytes).hexdigest()
    capsys.readouterr()
    suspect = memorizing_model(base / "stolen.onnx", kit.opening, 10)
    out = base / "verdict.json"
    assert run("dispute", "open", "--server", server.url, "--token", TOKEN,
               "--suspect", suspect, "--claim", f"{card_id}={kit.opening_path}",
               "--service-key", setup["key"], "--out", out) == 0
    text = capsys.readouterr().out
    assert "signature checked" in text and f"winner: {card_id}" in text
    dispute_id = json.loads(out.read_text())["dispute_id"]
    assert run("dispute", "show", dispute_id, "--server", server.url,
               "--service-key", setup["key"]) == 0
    with pytest.raises(LaminateError, match="CARD_ID=OPENING"):
        run("dispute", "open", "--server", server.url, "--token", TOKEN,
            "--suspect", suspect, "--claim", "nonsense")


def test_dispute_against_a_prediction_url(setup, tmp_path, capsys):
    """A suspect known only by its endpoint (labels over HTTP): the verdict names the URL
    and its own first sighting, never a model digest."""
    from predict_server import PredictEndpoint

    kit = setup["kit"]
    endpoint = PredictEndpoint(memorizing_model(tmp_path / "stolen.onnx", kit.opening, 10))
    policy = setup["dir"] / "policy.yaml"
    server = start_server(tmp_path / "svc", database_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                          policy_path=policy, tokens=(TOKEN,), allow_prediction_urls=True)
    try:
        assert run("log", "submit", kit.card_path, "--server", server.url, "--token", TOKEN) == 0
        card_id = hashlib.sha256(kit.card_bytes).hexdigest()
        capsys.readouterr()
        out = tmp_path / "verdict.json"
        assert run("dispute", "open", "--server", server.url, "--token", TOKEN,
                   "--suspect-url", endpoint.url, "--claim", f"{card_id}={kit.opening_path}",
                   "--out", out) == 0
        assert f"suspect prediction URL {endpoint.url}" in capsys.readouterr().out
        suspect = json.loads(out.read_text())["verdict"]["suspect"]
        assert suspect["prediction_url"] == endpoint.url and "sha256" not in suspect
    finally:
        server.stop()
        endpoint.close()
