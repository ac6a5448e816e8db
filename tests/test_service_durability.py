"""Crash safety and shared databases: kill -9 during a burst loses no acknowledged card,
several processes on one database never fork the log, uploads are size-limited."""
import base64
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cardkit import make_card
from cards import keys, merkle
from servers import start_server
from service_helpers import card_variant, combined_policy, database_urls, make_database
from verifier import logproof

TOKEN = "durable-token"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    base = tmp_path_factory.mktemp("durable")
    owner = make_card(base / "owner")
    return owner, combined_policy(base / "policy.yaml", [owner])


@pytest.fixture(params=database_urls())
def database(request, tmp_path):
    url, cleanup = make_database(request.param, tmp_path)
    yield url
    cleanup()


def _client(server):
    return httpx.Client(base_url=server.url, timeout=60,
                        headers={"Authorization": f"Bearer {TOKEN}"})


def _post(client, card):
    return client.post("/v1/cards", content=card, headers={"Content-Type": "application/cbor"})


def _head(client, public_key):
    raw = client.get("/v1/log/tree-head").json()
    return logproof.verify_tree_head(base64.b64decode(raw["signed"]), public_key)


def _check_consistent(client, old, new):
    proof = client.get("/v1/log/consistency",
                       params={"first": old.tree_size, "second": new.tree_size}).json()
    logproof.check_consistency(old.tree_size, new.tree_size,
                           [bytes.fromhex(p) for p in proof["consistency_proof"]],
                           old.root_hash, new.root_hash)


def _check_included(client, card_bytes, head):
    card_id = hashlib.sha256(card_bytes).hexdigest()
    row = client.get(f"/v1/cards/{card_id}")
    assert row.status_code == 200, f"acknowledged card {card_id} is missing"
    index = row.json()["leaf_index"]
    proof = client.get("/v1/log/inclusion",
                       params={"leaf_index": index, "tree_size": head.tree_size}).json()
    logproof.check_inclusion(merkle.leaf_hash(card_bytes), index, head.tree_size,
                         [bytes.fromhex(p) for p in proof["inclusion_proof"]], head.root_hash)


def test_kill_9_during_burst_loses_no_acknowledged_card(kit, database, tmp_path):
    owner, policy = kit
    key_path = tmp_path / "service-key.pem"
    keys.save_private_key(keys.generate_private_key("ed25519"), key_path)
    public_key = keys.load_private_key(key_path).public_key()
    cards = [card_variant(owner, i) for i in range(60)]
    server = start_server(tmp_path / "a", database_url=database, policy_path=policy,
                          key_path=key_path, tokens=(TOKEN,))
    acknowledged = []
    try:
        with _client(server) as client:
            for card in cards[:2]:
                assert _post(client, card).status_code == 201
                acknowledged.append(card)
            early = _head(client, public_key)
        lock = threading.Lock()
        killed = threading.Event()

        def register(card):
            if killed.is_set():
                return
            try:
                with _client(server) as client:
                    response = _post(client, card)
            except httpx.HTTPError:
                return
            if response.status_code == 201:
                with lock:
                    acknowledged.append(card)
                    if len(acknowledged) >= 14 and not killed.is_set():
                        killed.set()
                        server.kill()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(register, cards[2:]))
        assert killed.is_set(), "the burst finished before the kill"
    finally:
        server.kill()

    # Restarted through the CLI on the same database: start-up audits the whole log.
    restarted = start_server(tmp_path / "b", database_url=database, policy_path=policy,
                             key_path=key_path, tokens=(TOKEN,), via_cli=True)
    try:
        with _client(restarted) as client:
            head = _head(client, public_key)
            for card in acknowledged:
                _check_included(client, card, head)
            _check_consistent(client, early, head)
            # Every card can still be (re-)registered: unacknowledged ones were either
            # fully committed or not at all.
            for card in cards:
                assert _post(client, card).status_code in (200, 201)
            _check_consistent(client, head, _head(client, public_key))
    finally:
        restarted.stop()


def test_two_processes_on_one_database_do_not_fork_the_log(kit, database, tmp_path):
    owner, policy = kit
    key_path = tmp_path / "shared-key.pem"
    keys.save_private_key(keys.generate_private_key("ed25519"), key_path)
    public_key = keys.load_private_key(key_path).public_key()
    a = start_server(tmp_path / "a", database_url=database, policy_path=policy,
                     key_path=key_path, tokens=(TOKEN,))
    b = start_server(tmp_path / "b", database_url=database, policy_path=policy,
                     key_path=key_path, tokens=(TOKEN,))
    try:
        with _client(a) as ca, _client(b) as cb:
            early = _head(ca, public_key)
            cards = [card_variant(owner, 100 + i) for i in range(24)]

            def register(pair):
                i, card = pair
                response = _post(ca if i % 2 else cb, card)
                assert response.status_code == 201, response.text
                return response.json()["leaf_index"]

            with ThreadPoolExecutor(6) as pool:
                indices = list(pool.map(register, enumerate(cards)))
            assert len(set(indices)) == len(indices)
            head_a, head_b = _head(ca, public_key), _head(cb, public_key)
            assert (head_a.tree_size, head_a.root_hash) == (head_b.tree_size, head_b.root_hash)
            for card in cards:
                _check_included(ca, card, head_a)
            _check_consistent(cb, early, head_a)
    finally:
        a.stop()
        b.stop()
    # A process with a different key is refused instead of signing a second history.
    with pytest.raises(RuntimeError, match="started by service key"):
        start_server(tmp_path / "c", database_url=database, policy_path=policy,
                     key_path=tmp_path / "other-key.pem", tokens=(TOKEN,), timeout=60)


def test_upload_limit_is_413(kit, tmp_path):
    owner, policy = kit
    server = start_server(tmp_path, database_url=f"sqlite:///{tmp_path / 's.sqlite'}",
                          policy_path=policy, tokens=(TOKEN,), max_upload_mb=0.01)
    try:
        with _client(server) as client:
            big = _post(client, b"\x00" * 20000)
            assert big.status_code == 413 and "upload limit" in big.json()["detail"]
            chunked = client.post("/v1/cards", content=iter([b"\x00" * 4096] * 5),
                                  headers={"Content-Type": "application/cbor"})
            assert chunked.status_code == 413
            files = client.post("/v1/verify", data={"card_id": "0" * 64},
                                files={"model": ("m.onnx", b"\x01" * 30000)})
            assert files.status_code == 413
            # Endpoints with FastAPI form parameters catch the cut-off themselves; the
            # answer must still be 413 with the reason, not "error parsing the body".
            boundary = "limit"
            form = (f'--{boundary}\r\nContent-Disposition: form-data; name="claims"\r\n\r\n[]'
                    f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="model"; '
                    f'filename="m"\r\n\r\n').encode() + b"\x01" * 30000 \
                + f"\r\n--{boundary}--\r\n".encode()
            for path in ("/v1/disputes", "/v1/ownership"):
                streamed = client.post(
                    path, content=iter([form[i:i + 4096] for i in range(0, len(form), 4096)]),
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
                assert streamed.status_code == 413, (path, streamed.text)
                assert "upload limit" in streamed.json()["detail"]
            assert client.get("/healthz").status_code == 200
    finally:
        server.stop()
