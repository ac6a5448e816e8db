"""`laminate verify` and `laminate show` as a user runs them: exit codes, one-line errors,
no tracebacks, whatever bytes are handed in."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

import cardkit
from cards import cbor, cose, keys
from cards.card import MAX_CARD_BYTES

ROOT = Path(__file__).resolve().parents[1]


def laminate(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "laminate", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return cardkit.make_card(tmp_path_factory.mktemp("clikit"))


def _assert_clean_failure(out, codes=(1, 2)):
    assert out.returncode in codes, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    if out.returncode == 2:
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("laminate: error:"), out.stderr


def test_verify_ok_table_and_json(kit):
    out = laminate("verify", kit.card_path, "--model", kit.model_path, "--policy", kit.policy_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "backend sim" in lines[0] and "WARNING" in lines[0]
    assert lines[1].startswith("SIMULATED HARDWARE")
    rows = [line.split()[:2] for line in lines[3:]]
    assert ["affirming", "quote_signature"] in rows and ["warning", "simulated_hardware"] in rows

    out = laminate("verify", kit.card_path, "--model-sha256",
                   json.loads(laminate("show", kit.card_path, "--format", "json").stdout)
                   ["card"]["claims"]["model"]["sha256"], "--policy", kit.policy_path, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["status"] == "warning" and doc["tier"] == 32 and doc["simulated"] is True
    assert doc["policy_id"] == "cardkit" and doc["backend"] == "sim"
    assert {c["check"]: c["status"] for c in doc["checks"]}["model_digest"] == "affirming"


def test_verify_default_policy_rejects_sim(kit):
    out = laminate("verify", kit.card_path, "--json")
    assert out.returncode == 1
    checks = {c["check"]: c for c in json.loads(out.stdout)["checks"]}
    assert checks["backend"]["reason"] == ("backend sim is not allowed by policy default; "
                                           "simulated hardware gives no guarantee")


def test_verify_tampered_model_exit_1(kit, tmp_path):
    model = bytearray(kit.model_path.read_bytes())
    model[-1] ^= 0xFF
    (tmp_path / "m.onnx").write_bytes(bytes(model))
    out = laminate("verify", kit.card_path, "--model", tmp_path / "m.onnx", "--policy", kit.policy_path)
    assert out.returncode == 1
    assert any(line.startswith("contraindicated") and "model_digest" in line
               for line in out.stdout.splitlines())


def _duplicate_key_card(kit) -> bytes:
    """A correctly signed card whose payload map repeats the schema_version key."""
    payload = kit.payload
    body = b"".join(cbor.dumps(k) + cbor.dumps(payload[k])
                    for k in sorted(payload, key=lambda k: cbor.dumps(k)))
    body += cbor.dumps("schema_version") + cbor.dumps(1)
    payload_bytes = bytes([0xA0 + len(payload) + 1]) + body
    key = kit.private_key
    return cose.sign1(payload_bytes, key, kid=keys.key_id(key.public_key()))


@pytest.mark.parametrize("name", ["random", "cbor_not_card", "duplicate_key", "truncated",
                                  "bad_tag", "empty", "oversized", "missing", "directory"])
def test_garbage_inputs_fail_cleanly(kit, tmp_path, name):
    path = tmp_path / "card.cbor"
    if name == "random":
        path.write_bytes(os.urandom(3000))
    elif name == "cbor_not_card":
        path.write_bytes(cbor.dumps({"claims": [1, 2, 3], "evidence": "x"}))
    elif name == "duplicate_key":
        path.write_bytes(_duplicate_key_card(kit))
    elif name == "truncated":
        path.write_bytes(kit.card_bytes[: len(kit.card_bytes) // 2])
    elif name == "bad_tag":
        path.write_bytes(cbor2.dumps(cbor2.CBORTag(98, cbor2.loads(kit.card_bytes).value)))
    elif name == "empty":
        path.write_bytes(b"")
    elif name == "oversized":
        with path.open("wb") as f:
            f.truncate(MAX_CARD_BYTES + 1)
    elif name == "directory":
        path.mkdir()
    for command in (["verify", path, "--policy", kit.policy_path],
                    ["verify", path, "--json"], ["show", path]):
        out = laminate(*command)
        _assert_clean_failure(out)
        if command[0] == "show" or name in ("empty", "oversized", "missing", "directory"):
            assert out.returncode == 2, (command, out.stderr)
        elif "--json" in command:
            doc = json.loads(out.stdout)
            assert doc["status"] == "contraindicated"
            assert [c["check"] for c in doc["checks"]] == ["card_format"]
        else:
            failing = [line for line in out.stdout.splitlines() if line.startswith("contraindicated")]
            assert len(failing) == 1 and "card_format" in failing[0]
    if name == "duplicate_key":
        assert "duplicate" in laminate("show", path).stderr.lower()


@pytest.mark.parametrize("args, message", [
    (["--policy", "{tmp}/nope.yaml"], "not found"),
    (["--policy", "{tmp}/bad.yaml"], "unknown policy key"),
    (["--model", "{tmp}/nope.onnx"], "model file not found"),
    (["--model-sha256", "xyz"], "expected 64 hex digits"),
])
def test_verify_usage_errors_exit_2(kit, tmp_path, args, message):
    (tmp_path / "bad.yaml").write_text("alow_backends: [sim]\n")
    out = laminate("verify", kit.card_path, *[a.format(tmp=tmp_path) for a in args])
    _assert_clean_failure(out, codes=(2,))
    assert message in out.stderr


@pytest.mark.parametrize("fmt, marker", [("yaml", "SIMULATED"), ("md", "SIMULATED HARDWARE"),
                                         ("html", "<html"), ("json", '"schema_version": 1')])
def test_show_formats(kit, fmt, marker):
    out = laminate("show", kit.card_path, "--format", fmt)
    assert out.returncode == 0, out.stderr
    assert marker.lower() in out.stdout.lower()


def test_show_json_with_verification(kit):
    out = laminate("show", kit.card_path, "--format", "json", "--policy", kit.policy_path,
                   "--model", kit.model_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["verification"]["status"] == "warning"
    assert isinstance(doc["card"]["evidence"]["quote"], str)  # bytes shown as hex


def test_verify_command_never_loads_torch(kit):
    """The whole `laminate verify` path (CLI composition root included) stays torch-free."""
    script = ("import sys\nfrom laminate.cli import main\n"
              f"rc = main(['verify', {str(kit.card_path)!r}, '--policy', {str(kit.policy_path)!r},"
              f" '--model', {str(kit.model_path)!r}, '--json'])\n"
              "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'opacus'))\n"
              "print('RESULT', rc, heavy)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "RESULT 0 []", out.stdout[-500:] + out.stderr


def test_terminal_control_bytes_in_what_is_echoed_are_escaped(kit, tmp_path):
    """Reasons and errors quote file names and card fields: an escape sequence in them is
    shown escaped, never sent raw to the terminal (it could clear or rewrite the screen)."""
    from verifier.result import Check, Result

    table = Result([Check("schema", "contraindicated", "claims.dataset\x1b[2J",
                          "name 'x\x1b]0;owned\x07' \u202egnp.")]).to_table()
    assert "\x1b" not in table and "\x07" not in table and "\u202e" not in table
    assert "claims.dataset\\x1b[2J" in table and "\\u202egnp." in table
    out = laminate("verify", tmp_path / "card\x1b[31m.cbor", "--model", kit.model_path)
    assert out.returncode == 2 and "\x1b" not in out.stderr, out.stderr
    assert "card\\x1b[31m.cbor" in out.stderr
