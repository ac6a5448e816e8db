"""Service throughput: registrations/s and verifications/s over loopback HTTP with 1, 8
and 32 concurrent clients, next to the in-process rates measured in the same run.

The target is that the HTTP service keeps at least 50% of the in-process verification
rate (the appraisal itself dominates; HTTP, JSON and the database are the overhead).

    python bench/service.py            # default sizes
    python bench/service.py --quick    # seconds; what the tests run
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

TOKEN = "bench-token"
TARGET = 0.5


def _rate(count, seconds):
    return count / seconds if seconds > 0 else float("inf")


def _median(values):
    return statistics.median(values) if values else None


def process_cpu_seconds(pid):
    """CPU time (user + system) of a process and all its descendants, from /proc; None
    where /proc is missing. Used to report what the server spends per request."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0, [pid]
    try:
        while todo:
            p = todo.pop()
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
    except (OSError, ValueError):
        return None
    return total / tick


def in_process_verifications(card, policy, digest, count):
    """(verifications/s, CPU ms per verification) of appraise() called directly."""
    from verifier.appraise import appraise

    appraise(card, policy=policy, model_sha256=digest)          # warm caches as the server does
    cpu, started = time.process_time(), time.perf_counter()
    for _ in range(count):
        result = appraise(card, policy=policy, model_sha256=digest)
        assert result.status != "contraindicated", result.to_table()
    elapsed = time.perf_counter() - started
    return _rate(count, elapsed), (time.process_time() - cpu) / count * 1000


def in_process_registrations(cards, policy_path, workdir):
    from registry.config import ServiceConfig
    from registry.service import Service

    service = Service(ServiceConfig(database_url=f"sqlite:///{workdir / 'inproc.sqlite'}",
                                    policy_path=str(policy_path),
                                    key_path=str(workdir / "inproc-key.pem")))
    service.register_card(cards[0])
    started = time.perf_counter()
    for card in cards[1:]:
        status, body = service.register_card(card)
        assert status == 201, body
    rate = _rate(len(cards) - 1, time.perf_counter() - started)
    service.close()
    return rate


def http_run(url, clients, jobs, send, server_pid=None):
    """Run ``send(connection, job)`` for every job with ``clients`` threads, each holding
    one keep-alive connection (stdlib http.client: the client should cost the shared
    CPU as little as possible). Returns requests/s, the client's CPU ms per request (this
    process does nothing else meanwhile) and the server's CPU ms per request."""
    parsed = urllib.parse.urlsplit(url)
    local = threading.local()
    made = []

    def connection():
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
            made.append(local.conn)
        return local.conn

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: connection(), range(clients)))
        server_before = process_cpu_seconds(server_pid) if server_pid else None
        cpu, started = time.process_time(), time.perf_counter()
        list(pool.map(lambda job: send(connection(), job), jobs))
        elapsed = time.perf_counter() - started
        client_ms = (time.process_time() - cpu) / len(jobs) * 1000
        server_after = process_cpu_seconds(server_pid) if server_pid else None
    for conn in made:
        conn.close()
    server_ms = None
    if server_before is not None and server_after is not None:
        server_ms = (server_after - server_before) / len(jobs) * 1000
    return _rate(len(jobs), elapsed), client_ms, server_ms


def server_stack():
    """Which event loop and HTTP parser uvicorn picks here ("auto" prefers the C ones)."""
    def has(module):
        try:
            __import__(module)
            return True
        except ImportError:
            return False
    return {"loop": "uvloop" if has("uvloop") else "asyncio",
            "http": "httptools" if has("httptools") else "h11"}


def _call(conn, path, body, content_type):
    conn.request("POST", path, body=body, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": content_type})
    response = conn.getresponse()
    return response.status, response.read()


def register(conn, card):
    status, body = _call(conn, "/v1/cards", card, "application/cbor")
    if status != 201:
        raise RuntimeError(f"registration failed: {status} {body[:300]!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, runs in seconds")
    parser.add_argument("--clients", default="1,8,32", help="concurrency levels")
    parser.add_argument("--registrations", type=int, default=150,
                        help="per level, split over the repetitions")
    parser.add_argument("--verifications", type=int, default=300, help="per level and repetition")
    parser.add_argument("--repeats", type=int, default=3,
                        help="repetitions per level, each between two in-process runs; "
                             "medians are reported")
    parser.add_argument("--database", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--workers", default="1,2",
                        help="`laminate serve --workers` counts to run, comma-separated")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "service.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.registrations, args.verifications, args.repeats = 12, 24, 2
    levels = [int(x) for x in args.clients.split(",")]
    workers = [int(x) for x in args.workers.split(",")]
    per_rep = max(1, args.registrations // args.repeats)

    from cardkit import make_card
    from servers import start_server
    from service_helpers import card_variant, combined_policy
    from verifier.policy import Policy

    with tempfile.TemporaryDirectory(prefix="laminate-bench-service-") as tmp:
        tmp = Path(tmp)
        kit = make_card(tmp / "kit")
        policy_path = combined_policy(tmp / "policy.yaml", [kit])
        policy = Policy.load(policy_path)
        digest = hashlib.sha256(kit.model_path.read_bytes()).hexdigest()
        runs = [(w, c) for w in workers for c in levels]
        cards = [card_variant(kit, i)
                 for i in range(per_rep * args.repeats * (len(runs) + 1) + 1)]
        inproc_cards, http_cards = cards[:per_rep * args.repeats + 1], cards[per_rep * args.repeats + 1:]

        def inproc():
            return in_process_verifications(kit.card_bytes, policy, digest, args.verifications)

        inproc_register = in_process_registrations(inproc_cards, policy_path, tmp)
        rows, inproc_rates, inproc_cpu = [], [], []
        for w in workers:
            # `laminate serve`, the deployed entry point, for every worker count.
            server = start_server(tmp / f"svc-{w}", database_url=args.database
                                  or f"sqlite:///{tmp / f'svc-{w}.sqlite'}",
                                  policy_path=policy_path, tokens=(TOKEN,),
                                  key_path=tmp / "key.pem", workers=w, via_cli=True)
            try:
                conn = http.client.HTTPConnection(*urllib.parse.urlsplit(server.url).netloc.split(":"))
                status, body = _call(conn, "/v1/cards", kit.card_bytes, "application/cbor")
                conn.close()
                card_id = json.loads(body)["card_id"]
                form = urllib.parse.urlencode({"card_id": card_id, "model_sha256": digest}).encode()

                def verify(conn, _job, form=form):
                    status, body = _call(conn, "/v1/verify", form,
                                         "application/x-www-form-urlencoded")
                    if status != 200 or json.loads(body)["result"]["status"] == "contraindicated":
                        raise RuntimeError(f"verification failed: {status} {body[:300]!r}")

                # Warm every worker process (imports, caches) before anything is timed.
                http_run(server.url, 8, list(range(16 * w)), verify)
                for clients in levels:
                    i = runs.index((w, clients))
                    batch = http_cards[i * per_rep * args.repeats:(i + 1) * per_rep * args.repeats]
                    reg, ver, ratio, client_ms, server_ms, base = [], [], [], [], [], []
                    # The machine is shared: every HTTP run sits between two in-process
                    # runs and is compared with their mean; medians over the repetitions.
                    before = inproc()
                    for rep in range(args.repeats):
                        chunk = batch[rep * per_rep:(rep + 1) * per_rep]
                        reg.append(http_run(server.url, clients, chunk, register)[0])
                        rate, c_ms, s_ms = http_run(server.url, clients,
                                                    list(range(args.verifications)), verify,
                                                    server_pid=server.proc.pid)
                        after = inproc()
                        baseline = (before[0] + after[0]) / 2
                        ver.append(rate)
                        ratio.append(rate / baseline)
                        base.append(baseline)
                        client_ms.append(c_ms)
                        if s_ms is not None:
                            server_ms.append(s_ms)
                        inproc_rates.append(after[0])
                        inproc_cpu.append(after[1])
                        before = after
                    rows.append({
                        "workers": w, "clients": clients,
                        "registrations_per_s": round(_median(reg), 1),
                        "verifications_per_s": round(_median(ver), 1),
                        "in_process_verifications_per_s": round(_median(base), 1),
                        "verification_ratio": round(_median(ratio), 3),
                        "verification_ratio_runs": [round(r, 3) for r in ratio],
                        "registration_ratio": round(_median(reg) / inproc_register, 3),
                        "client_cpu_ms_per_verification": round(_median(client_ms), 3),
                        "server_cpu_ms_per_verification":
                            round(_median(server_ms), 3) if server_ms else None,
                    })
            finally:
                server.stop()

    cpu_ms = _median(inproc_cpu)
    best_row = max(rows, key=lambda r: r["verification_ratio"])
    best = best_row["verification_ratio"]
    report = {
        "benchmark": "service", "quick": args.quick, "machine": platform.machine(),
        "cpus": os.cpu_count(), "database": "sqlite" if not args.database else args.database.split(":")[0],
        "server": {"entry_point": "laminate serve", **server_stack()},
        "client": "http.client keep-alive connections, one per client thread, in the bench "
                  "process on the same machine",
        "registrations_per_level": per_rep * args.repeats,
        "verifications_per_level": args.verifications, "repeats": args.repeats,
        "in_process": {"verifications_per_s": round(_median(inproc_rates), 1),
                       "cpu_ms_per_verification": round(cpu_ms, 3),
                       "registrations_per_s": round(inproc_register, 1)},
        "http": rows, "target_ratio": TARGET, "best_verification_ratio": best,
        "best_configuration": {"workers": best_row["workers"], "clients": best_row["clients"]},
        "meets_target": best >= TARGET,
    }
    print(f"server: laminate serve, uvicorn loop={report['server']['loop']} "
          f"http={report['server']['http']}; {args.repeats} repetitions per level, medians")
    print(f"in-process: {report['in_process']['verifications_per_s']:.0f} verifications/s "
          f"(median of {len(inproc_rates)} runs interleaved with the HTTP runs, "
          f"{cpu_ms:.2f} ms CPU each), {inproc_register:.0f} registrations/s")
    print(f"{'workers':>7} {'clients':>7} {'reg/s':>7} {'ver/s':>7} {'in-proc/s':>9} "
          f"{'ver ratio':>9} {'reg ratio':>9} {'server ms':>9} {'client ms':>9}")
    for r in rows:
        server_ms = r["server_cpu_ms_per_verification"]
        print(f"{r['workers']:>7} {r['clients']:>7} {r['registrations_per_s']:>7.1f} "
              f"{r['verifications_per_s']:>7.1f} {r['in_process_verifications_per_s']:>9.1f} "
              f"{r['verification_ratio']:>9.2f} {r['registration_ratio']:>9.2f} "
              f"{server_ms if server_ms is not None else float('nan'):>9.2f} "
              f"{r['client_cpu_ms_per_verification']:>9.2f}")
    client = _median([r["client_cpu_ms_per_verification"] for r in rows])
    print(f"server ms / client ms: CPU per HTTP verification spent by the server (all "
          f"workers) and by the load generator, which shares the {os.cpu_count()} CPUs with "
          f"it: the client costs {client:.2f} ms per request, {100 * client / cpu_ms:.0f}% "
          f"of one in-process appraisal ({cpu_ms:.2f} ms)")
    print(f"best HTTP/in-process verification ratio {best:.2f} with {best_row['workers']} "
          f"worker(s), {best_row['clients']} clients (target >= {TARGET:.2f}): "
          f"{'met' if best >= TARGET else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
