"""Several processes append to one database at once: one log, no fork, tiles that
match the entries, and a process killed with SIGKILL mid-batch loses nothing it had
acknowledged (an append is acknowledged only after its transaction committed)."""
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from cards import keys, merkle
from registry import db as dbmod
from registry.tlog import TransparencyLog
from service_helpers import database_urls, make_database
from verifier import tiles

WORKER = r"""
import sys
from cards import keys
from registry import db as dbmod
from registry.tlog import TransparencyLog
url, key_path, name, batches = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
db = dbmod.open_database(url)
log = TransparencyLog(db, keys.load_private_key(key_path))
for b in range(batches):
    items = [("test", name, f"{name}-{b}-{i}".encode()) for i in range(40)]
    with db.write() as (session, head):
        out = log.append_many(session, head, items)
    print("acked", out[0][0], b, flush=True)
"""


def _start(url, key_path, name, batches):
    return subprocess.Popen([sys.executable, "-c", WORKER, url, str(key_path), name,
                             str(batches)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})


@pytest.mark.parametrize("kind", database_urls())
def test_concurrent_appenders_and_a_kill_keep_one_log(kind, tmp_path):
    url, cleanup = make_database(kind, tmp_path)
    key_path = tmp_path / "k.pem"
    keys.save_private_key(keys.generate_private_key("ed25519"), key_path)
    try:
        dbmod.open_database(url).dispose()           # schema first, then the race
        procs = {n: _start(url, key_path, n, 15) for n in ("a", "b", "c")}
        victim = _start(url, key_path, "v", 10_000)
        first = victim.stdout.readline()
        assert first.startswith("acked"), first
        time.sleep(0.3)
        victim.send_signal(signal.SIGKILL)
        victim_acks = [first] + victim.communicate()[0].splitlines()
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0 and out.count("acked") == 15, name
        db = dbmod.open_database(url)
        log = TransparencyLog(db, keys.load_private_key(key_path))
        size = log.audit(full=True)                  # every entry rehashed vs its tile
        with db.read() as session:
            rows = session.execute(select(dbmod.LogEntry.leaf_index, dbmod.LogEntry.data)
                                   .order_by(dbmod.LogEntry.leaf_index)).all()
        by_index = {i: bytes(d) for i, d in rows}
        assert sorted(by_index) == list(range(size))
        hashes = [merkle.leaf_hash(by_index[i]) for i in range(size)]
        assert tiles.tree_root(log.read_tile, size) == merkle.root_of(hashes)
        for line in victim_acks:
            if line.startswith("acked"):
                _, index, batch = line.split()
                assert by_index[int(index)] == f"v-{batch}-0".encode(), \
                    f"acknowledged batch {batch} of the killed process is not at {index}"
        names = [d.split(b"-")[0] for d in by_index.values()]
        assert all(names.count(n) == 15 * 40 for n in (b"a", b"b", b"c"))
        assert names.count(b"v") % 40 == 0, "a killed batch was partly committed"
        db.dispose()
    finally:
        cleanup()
