"""Hostile inputs to the command line: deep nesting in every file the tools read,
hostile answers from a service, predicate literals, control characters in claims.
Each is refused with one clean line (exit 2) or shown harmlessly."""
import base64
import http.server
import json
import threading

import pytest

import cardkit
from cards import keys, views
from cards.errors import LaminateError
from laminate.cli import main
from registry.disputes import sign_verdict
from test_service_cli import run
from verifier.appraise import appraise
from verifier.policy import Policy

DEEP_YAML = "a: " + "[" * 5000 + "1" + "]" * 5000 + "\n"
DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return cardkit.make_card(tmp_path_factory.mktemp("inputs-kit"))


def one_clean_line(capsys, argv, *words):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("laminate: error:"), err
    assert "Traceback" not in err and all(w in err for w in words), err


def test_deep_policy_yaml_is_one_clean_line(kit, tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEEP_YAML)
    one_clean_line(capsys, ["verify", kit.card_path, "--policy", policy],
                   "policy.yaml", "nested deeper than 64 levels")


def test_deep_config_yaml_is_one_clean_line(tmp_path):
    from attest.config import load_config

    config = tmp_path / "config.yaml"
    config.write_text(DEEP_YAML)
    with pytest.raises(LaminateError, match=r"config\.yaml: not valid YAML .*nested deeper"):
        load_config(config)


def test_moderate_nesting_still_loads(tmp_path):
    """The bound is on depth, not on ordinary lists and maps."""
    from cards import yamlload
    assert yamlload.safe_load("a: " + "[" * 60 + "1" + "]" * 60) is not None


def test_deep_opening_is_one_clean_line(kit, tmp_path, capsys):
    opening = tmp_path / "opening.json"
    opening.write_text(DEEP_JSON)
    one_clean_line(capsys, ["ownership", "--card", kit.card_path, "--opening", opening,
                            "--suspect", kit.model_path], "nested too deeply")


def test_deep_since_and_claim_files_are_clean_errors(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP_JSON)
    key = tmp_path / "key.pem"
    key.write_bytes(keys.public_pem(keys.generate_private_key("ed25519")))
    with pytest.raises(LaminateError, match="not a tree head .*nested too deeply"):
        run("log", "consistency", "--server", "http://127.0.0.1:9", "--since", deep,
            "--service-key", key)
    with pytest.raises(LaminateError, match="not a JSON watermark opening"):
        run("dispute", "open", "--server", "http://127.0.0.1:9", "--suspect", deep,
            "--claim", f"{'ab' * 32}={deep}")


# --- hostile service answers -------------------------------------------------------------

class HostileService:
    """Answers every request with the status and body set for its path."""

    def __init__(self):
        self.answers = {}
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status, body = service.answers.get(self.path.split("?")[0], (404, b"{}"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile():
    server = HostileService()
    yield server
    server.close()


HOSTILE_BODIES = [b"not json", b"[]", b"null", b"{}", DEEP_JSON.encode(),
                  json.dumps({"receipt": 5, "signed": ["x"], "verdict": "v",
                              "signed_verdict": "%%%", "public_key_pem": 7}).encode(),
                  json.dumps({"receipt": "!!", "card_id": {}, "leaf_index": "1",
                              "tree_size": None, "root_hash": 3, "signed": "AAAA"}).encode()]


@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
def test_hostile_answers_are_clean_errors_in_every_client(hostile, kit, tmp_path, body):
    key = tmp_path / "key.pem"
    key.write_bytes(keys.public_pem(keys.generate_private_key("ed25519")))
    for path, status in (("/v1/cards", 201), ("/v1/log/tree-head", 200), ("/v1/log/key", 200),
                         ("/v1/disputes", 201), ("/v1/disputes/d1", 200)):
        hostile.answers[path] = (status, body)
    calls = [("log", "submit", kit.card_path, "--server", hostile.url),
             ("log", "tree-head", "--server", hostile.url),
             ("log", "tree-head", "--server", hostile.url, "--service-key", key),
             ("dispute", "open", "--server", hostile.url, "--suspect", kit.model_path,
              "--claim", f"{'ab' * 32}={kit.opening_path}"),
             ("dispute", "show", "d1", "--server", hostile.url),
             ("dispute", "show", "d1", "--server", hostile.url, "--service-key", key)]
    for argv in calls:
        with pytest.raises(LaminateError):
            run(*argv)


def test_dispute_show_prints_only_the_verified_verdict(hostile, tmp_path, capsys):
    """The service signs a verdict for card A but shows an unsigned copy naming card B:
    with --service-key only the signed A reaches the screen."""
    key = keys.generate_private_key("ed25519")
    pem = tmp_path / "service.pem"
    pem.write_bytes(keys.public_pem(key))
    signed = {"type": "laminate-dispute-verdict/1", "dispute_id": "d1",
              "suspect": {"sha256": "aa" * 32, "leaf_index": 3, "source": "submitted"},
              "claims": [{"card_id": "A" * 8, "won": True, "reason": "ownership shown"}],
              "winner": "A" * 8, "reason": "earliest"}
    shown = {**signed, "winner": "B" * 8,
             "claims": [{"card_id": "B" * 8, "won": True, "reason": "ownership shown"}]}
    view = {"dispute_id": "d1", "verdict": shown,
            "signed_verdict": base64.b64encode(sign_verdict(signed, key)).decode()}
    hostile.answers["/v1/disputes/d1"] = (200, json.dumps(view).encode())
    assert run("dispute", "show", "d1", "--server", hostile.url, "--service-key", pem) == 0
    out = capsys.readouterr().out
    assert "signature checked" in out and "winner: AAAAAAAA" in out and "BBBBBBBB" not in out


# --- predicates and views ----------------------------------------------------------------

def test_whitespace_inside_a_predicate_literal_is_kept(kit):
    """`model.name != "banned  model"` must not hold for the name with two spaces."""
    def rename(claims):
        claims["model"]["name"] = "banned  model"
    forged = cardkit.forge(kit, mutate_claims=rename)
    doc = {"policy_id": "names", "allow_backends": ["sim"],
           "trusted_roots": [str(kit.root_pem_path)],
           "trusted_release_keys": [str(kit.release_public_pem_path)],
           "reference_values": {"code": [kit.code_sha256]},
           "require": ['model.name   !=  "banned  model"']}
    policy = Policy.from_mapping(doc)
    check = appraise(forged, policy=policy).get('policy:model.name != "banned  model"')
    assert check is not None and check.status == "contraindicated", check


ESC_NAME = "kit\x1b[2A\x1b[2K\rall clear\u202e\x9b31m"


def test_control_characters_from_claims_never_reach_the_terminal(kit, capsys):
    def rename(claims):
        claims["model"]["name"] = ESC_NAME
    forged = cardkit.forge(kit, mutate_claims=rename)
    path = kit.tmp_path / "esc.cbor"
    path.write_bytes(forged)
    for fmt in ("yaml", "md", "html", "json"):
        assert main(["show", str(path), "--format", fmt]) == 0
        out = capsys.readouterr().out
        assert not any(c in out for c in "\x1b\r\u202e\x9b"), (fmt, out[:300])
        assert ("SIMULATED HARDWARE" in out) or fmt == "json"
    page = views.to_markdown({"claims": {"model": {"name": ESC_NAME}},
                              "evidence": {"backend": "sim"}})
    assert "u001b[2A" in page.replace("\\[", "[") and "\x1b" not in page
