"""Several processes, each batching the appends of several threads, write one
database at once: one log, no fork, tiles that match the entries, batches shared by
many entries, and a process killed with SIGKILL mid-batch loses nothing it had
acknowledged (an entry is acknowledged only after its batch committed)."""
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
import sys, threading
from cards import keys
from registry import db as dbmod
from registry.batching import Integrator
from registry.tlog import TransparencyLog
url, key_path, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
db = dbmod.open_database(url)
log = TransparencyLog(db, keys.load_private_key(key_path))
integ = Integrator(log, interval=0.02, max_batch=64)
out = threading.Lock()

def work(t):
    for i in range(count):
        data = f"{name}-{t}-{i}"
        index = integ.add("test", name, data.encode())
        with out:
            print("acked", index, data, flush=True)

threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
for th in threads:
    th.start()
for th in threads:
    th.join()
print("batches", integ.batches, flush=True)
integ.close()
""".replace("THREADS", "4")


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
        procs = {n: _start(url, key_path, n, 60) for n in ("a", "b", "c")}
        victim = _start(url, key_path, "v", 100_000)
        first = victim.stdout.readline()
        assert first.startswith("acked"), first
        time.sleep(0.5)
        victim.send_signal(signal.SIGKILL)           # mid-batch: it never stops appending
        victim_acks = [first] + victim.communicate()[0].splitlines()
        batches = 0
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0 and out.count("acked") == 4 * 60, name
            batches += int(out.split("batches ")[1])
        # 240 entries per process from 4 threads: batches are shared, not one per entry
        assert batches < 3 * 240 * 0.75, f"{batches} transactions for 720 entries"
        db = dbmod.open_database(url)
        log = TransparencyLog(db, keys.load_private_key(key_path))
        size = log.audit(full=True)                  # every entry rehashed vs its tile
        with db.read() as session:
            rows = session.execute(select(dbmod.LogEntry.leaf_index, dbmod.LogEntry.data)
                                   .order_by(dbmod.LogEntry.leaf_index)).all()
        by_index = {i: bytes(d) for i, d in rows}
        assert sorted(by_index) == list(range(size)), "the log has a gap: forked or torn"
        hashes = [merkle.leaf_hash(by_index[i]) for i in range(size)]
        assert tiles.tree_root(log.read_tile, size) == merkle.root_of(hashes)
        acked = [line.split() for line in victim_acks if line.startswith("acked")]
        assert len(acked) > 4, "the victim was killed before it acknowledged a batch"
        for _, index, data in acked:
            assert by_index.get(int(index)) == data.encode(), \
                f"acknowledged entry {data} of the killed process is not at {index}"
        names = [d.split(b"-")[0] for d in by_index.values()]
        assert all(names.count(n) == 4 * 60 for n in (b"a", b"b", b"c"))
        assert len(set(by_index.values())) == size, "one entry logged twice"
        db.dispose()
    finally:
        cleanup()
