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


def in_process_verifications(card, policy, digest, count):
    from verifier.appraise import appraise

    appraise(card, policy=policy, model_sha256=digest)          # warm caches as the server does
    started = time.perf_counter()
    for _ in range(count):
        result = appraise(card, policy=policy, model_sha256=digest)
        assert result.status != "contraindicated", result.to_table()
    return _rate(count, time.perf_counter() - started)


def in_process_registrations(cards, policy_path, workdir):
    from verifier.service.app import Service, ServiceConfig

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


def http_run(url, clients, jobs, send):
    """Run ``send(connection, job)`` for every job with ``clients`` threads, each holding
    one keep-alive connection (stdlib http.client: the client should cost the shared
    CPU as little as possible); returns requests per second."""
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
        started = time.perf_counter()
        list(pool.map(lambda job: send(connection(), job), jobs))
        elapsed = time.perf_counter() - started
    for conn in made:
        conn.close()
    return _rate(len(jobs), elapsed)


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
    parser.add_argument("--registrations", type=int, default=150, help="per level")
    parser.add_argument("--verifications", type=int, default=300, help="per level")
    parser.add_argument("--database", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--workers", default="1,2",
                        help="uvicorn worker process counts to run, comma-separated")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "service.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.registrations, args.verifications = 12, 24
    levels = [int(x) for x in args.clients.split(",")]
    workers = [int(x) for x in args.workers.split(",")]

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
        total = args.registrations * (len(levels) * len(workers) + 1) + 1
        cards = [card_variant(kit, i) for i in range(total)]

        inproc_verify = in_process_verifications(kit.card_bytes, policy, digest, args.verifications)
        inproc_register = in_process_registrations(cards[:args.registrations + 1], policy_path, tmp)
        http_cards = cards[args.registrations + 1:]

        rows, baselines = [], [inproc_verify]
        runs = [(w, c) for w in workers for c in levels]
        for w in workers:
            server = start_server(tmp / f"svc-{w}", database_url=args.database
                                  or f"sqlite:///{tmp / f'svc-{w}.sqlite'}",
                                  policy_path=policy_path, tokens=(TOKEN,),
                                  key_path=tmp / "key.pem", workers=w)
            try:
                conn = http.client.HTTPConnection(*urllib.parse.urlsplit(server.url).netloc.split(":"))
                status, body = _call(conn, "/v1/cards", kit.card_bytes, "application/cbor")
                conn.close()
                card_id = json.loads(body)["card_id"]
                form = urllib.parse.urlencode({"card_id": card_id, "model_sha256": digest}).encode()

                def verify(conn, _job):
                    status, body = _call(conn, "/v1/verify", form,
                                         "application/x-www-form-urlencoded")
                    if status != 200 or json.loads(body)["result"]["status"] == "contraindicated":
                        raise RuntimeError(f"verification failed: {status} {body[:300]!r}")

                # Warm every worker process (imports, caches) before anything is timed.
                http_run(server.url, 8, list(range(16 * w)), verify)
                for clients in levels:
                    i = runs.index((w, clients))
                    batch = http_cards[i * args.registrations:(i + 1) * args.registrations]
                    reg = http_run(server.url, clients, batch, register)
                    # The machine may be shared: measure the in-process baseline right
                    # before and after each HTTP run and compare against their mean.
                    before = in_process_verifications(kit.card_bytes, policy, digest,
                                                      args.verifications)
                    ver = http_run(server.url, clients, list(range(args.verifications)), verify)
                    after = in_process_verifications(kit.card_bytes, policy, digest,
                                                     args.verifications)
                    baseline = (before + after) / 2
                    baselines.append(baseline)
                    rows.append({"workers": w, "clients": clients,
                                 "registrations_per_s": round(reg, 1),
                                 "verifications_per_s": round(ver, 1),
                                 "in_process_verifications_per_s": round(baseline, 1),
                                 "verification_ratio": round(ver / baseline, 3),
                                 "registration_ratio": round(reg / inproc_register, 3)})
            finally:
                server.stop()

    best_row = max(rows, key=lambda r: r["verification_ratio"])
    best = best_row["verification_ratio"]
    report = {
        "benchmark": "service", "quick": args.quick, "machine": platform.machine(),
        "cpus": os.cpu_count(), "database": "sqlite" if not args.database else args.database.split(":")[0],
        "registrations_per_level": args.registrations,
        "verifications_per_level": args.verifications,
        "in_process": {"verifications_per_s": round(sum(baselines) / len(baselines), 1),
                       "registrations_per_s": round(inproc_register, 1)},
        "http": rows, "target_ratio": TARGET, "best_verification_ratio": best,
        "best_configuration": {"workers": best_row["workers"], "clients": best_row["clients"]},
        "meets_target": best >= TARGET,
    }
    print(f"in-process: {report['in_process']['verifications_per_s']:.0f} verifications/s "
          f"(mean of {len(baselines)} runs), {inproc_register:.0f} registrations/s")
    print(f"{'workers':>7} {'clients':>7} {'reg/s':>8} {'ver/s':>8} {'in-proc/s':>10} {'ver ratio':>10} {'reg ratio':>10}")
    for r in rows:
        print(f"{r['workers']:>7} {r['clients']:>7} {r['registrations_per_s']:>8.1f} {r['verifications_per_s']:>8.1f} "
              f"{r['in_process_verifications_per_s']:>10.1f} {r['verification_ratio']:>10.2f} "
              f"{r['registration_ratio']:>10.2f}")
    print(f"best HTTP/in-process verification ratio {best:.2f} with {best_row['workers']} "
          f"worker(s), {best_row['clients']} clients (target >= {TARGET:.2f}): "
          f"{'met' if best >= TARGET else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
