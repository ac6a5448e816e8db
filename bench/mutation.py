"""Mutation testing: break the code one operator at a time and see whether a test notices.

Each mutant changes exactly one thing in one module of cards/, verifier/ or the log of
registry/:

    compare   flip a comparison (<  ->  >=, == -> !=, in -> not in, is -> is not)
    boolop    swap `and` and `or`
    not       drop a `not`
    const     an integer constant in a comparison, index or arithmetic, plus one
    guard     an `if` whose body raises or returns: the raise/return becomes `pass`

The tree (tracked and untracked, not ignored) is copied into a scratch directory per
worker; a mutant is written there, the tests that exercise its module run against it
(`-x`, slow training tests excluded) with a wall-clock limit, and the original is put
back. A mutant is killed when a test fails, survives when all pass, and counts as a
timeout when the limit is hit (a loop the mutant made endless: caught, not missed).

    python bench/mutation.py                      # every module in MODULES, 2 workers
    python bench/mutation.py --module cards/merkle.py   # rerun one, keep the others
    python bench/mutation.py --module cards/card.py --survivors   # after adding tests
    python bench/mutation.py --report-only        # after editing EQUIVALENT

Results go to bench/results/mutation.json and .md. Surviving mutants that cannot be
told apart from the original by any input are listed in EQUIVALENT with the reason.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Module -> the tests that exercise it: those that import it, and for the checks reached
# only through appraise() the tamper tests. The reader's modules end with the differential
# corpus (every decision it recorded); it is the slowest, so with -x it runs only when the
# targeted tests have not already failed.
MODULES = {
    "verifier/appraise.py": ["test_mutants_appraise.py", "test_verifier_tamper.py"],
    "verifier/predicates.py": ["test_mutants_predicates.py", "test_verifier_policy.py"],
    "verifier/policy.py": ["test_mutants_policy.py", "test_verifier_policy.py"],
    "verifier/binomial.py": ["test_mutants_binomial.py", "test_ownership_stats.py"],
    "verifier/dp_check.py": ["test_mutants_dp_check.py", "test_mutants_appraise.py"],
    "verifier/distributed.py": ["test_verifier_distributed.py"],
    "cards/shards.py": ["test_verifier_distributed.py"],
    "verifier/sim_evidence.py": ["test_mutants_sim_evidence.py", "test_verifier_tamper.py"],
    "verifier/tpm_evidence.py": ["test_mutants_tpm_evidence.py", "test_tpm_backend.py"],
    "verifier/logproof.py": ["test_mutants_logproof.py", "test_tiles_checkpoint.py",
                             "test_service_tlog.py"],
    "cards/cose.py": ["test_mutants_cose.py", "test_cards_cose_vectors.py"],
    "cards/merkle.py": ["test_mutants_merkle.py", "test_cards_merkle.py",
                        "test_service_tlog.py"],
    "cards/cbor.py": ["test_cards_cbor.py", "test_cards_envelope.py", "test_reader_corpus.py"],
    "cards/card.py": ["test_mutants_card.py", "test_cards_envelope.py", "test_cards_schema.py",
                      "test_reader_corpus.py"],
    "cards/schema.py": ["test_mutants_schema.py", "test_cards_schema.py", "test_cards_layout.py",
                        "test_reader_corpus.py"],
    "registry/tlog.py": ["test_mutants_tlog.py", "test_service_tlog.py",
                         "test_tiles_batching.py"],
    "verifier/tiles.py": ["test_mutants_tiles.py", "test_tiles_proofs.py", "test_mutants_tlog.py",
                          "test_service_tlog.py"],
    "verifier/receipts.py": ["test_mutants_receipts.py", "test_service_tlog.py"],
}

# Survivors no input can tell from the original, keyed "path:line:column:operator",
# with the reason.
EQUIVALENT: dict[str, str] = {
    "cards/merkle.py:22:7:compare": "both branches hash 0x00 || data; the limit only picks "
                                    "the cheaper way",
    "cards/merkle.py:23:8:guard": "the fall-through computes the same H(0x00 || data)",
    "verifier/binomial.py:67:15:compare": "before the mode the terms grow, so none is 92 "
                                          "below the largest yet: the early stop never fires",
    "verifier/binomial.py:87:8:guard": "the exact integer comparison below decides every "
                                       "case the float shortcut decides, only slower",
    "verifier/binomial.py:137:12:guard": "with matches <= queries = 0 the tail is 1, so "
                                         "min(1, n_max * 1) is the same 1.0",
    "verifier/appraise.py:148:45:const": "the model file's read block size (1 << 20) does not "
                                        "change its digest",
    "verifier/appraise.py:148:50:const": "the model file's read block size (1 << 20) does not "
                                        "change its digest",
    "verifier/predicates.py:260:7:boolop": "when only one side is a number, == fails anyway "
                                           "(a bool against 1 is caught by the bool test)",
    "verifier/predicates.py:262:33:compare": "_same_kind never changes a verdict: values of "
                                             "different kinds are unequal under == anyway",
    "verifier/predicates.py:262:46:compare": "_same_kind never changes a verdict: values of "
                                             "different kinds are unequal under == anyway",
    "verifier/binomial.py:169:31:const": "an extra zero slot holds no probability mass",
    "verifier/sim_evidence.py:102:8:guard": "the cache only saves work: revalidating the "
                                           "chain gives the same check",
    "verifier/tiles.py:162:11:compare": "the memo only saves hashing: the layers rebuilt "
                                        "from the tile are the same",
    "registry/tlog.py:145:12:guard": "the tile cache only saves a database read: a "
                                     "committed tile only grows, so its row holds the "
                                     "cached prefix",
    "registry/tlog.py:135:15:compare": "which copy of a tile the cache keeps only decides "
                                       "whether a later read goes to the database, where "
                                       "the same committed prefix is",
    "registry/tlog.py:199:15:compare": "the planning pass only batches reads: a tile it "
                                       "leaves out is read on its own, with the same bytes",
    "registry/tlog.py:233:12:guard": "the known-size shortcut only skips a size query; the "
                                     "query gives the same answer for a size seen before",
    "registry/tlog.py:298:12:guard": "tiles.consistency_proof gives the same empty proof for "
                                     "equal sizes",
    "cards/cose.py:120:15:boolop": "cryptography refuses r = 0 or s = 0 itself (InvalidSignature)",
    "cards/cose.py:120:20:const": "r = 0 is refused by cryptography; r = 1 has probability 2**-256",
    "cards/cose.py:120:30:const": "s = 0 is refused by cryptography; s = 1 has probability 2**-256",
    "cards/cose.py:121:16:guard": "cryptography refuses r = 0 or s = 0 itself (InvalidSignature), so the result is False either way",
}

_FLIP = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt,
         ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
         ast.Is: ast.IsNot, ast.IsNot: ast.Is}


def _docstring_nodes(tree) -> set:
    """Ids of docstring constants: mutating prose tells nothing."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))
    return skip


def _int_constants(tree) -> set:
    """Ids of integer constants that decide something: compared, indexed or computed with."""
    chosen = set()
    for node in ast.walk(tree):
        parts = []
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
        elif isinstance(node, ast.BinOp):
            parts = [node.left, node.right]
        elif isinstance(node, ast.Subscript):
            parts = [node.slice] + ([node.slice.lower, node.slice.upper]
                                    if isinstance(node.slice, ast.Slice) else [])
        for part in parts:
            if (isinstance(part, ast.Constant) and type(part.value) is int):
                chosen.add(id(part))
    return chosen


_SYMBOL = {ast.Lt: "<", ast.GtE: ">=", ast.Gt: ">", ast.LtE: "<=", ast.Eq: "==",
           ast.NotEq: "!=", ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}


def mutation_points(tree) -> list[tuple[int, str, int, int, str]]:
    """(walk index, operator, line, column, change) for every mutation this module admits."""
    consts = _int_constants(tree)
    points = []
    for index, node in enumerate(ast.walk(tree)):
        where = (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _FLIP:
            op = type(node.ops[0])
            points.append((index, "compare", *where, f"{_SYMBOL[op]} -> {_SYMBOL[_FLIP[op]]}"))
        elif isinstance(node, ast.BoolOp):
            change = "and -> or" if isinstance(node.op, ast.And) else "or -> and"
            points.append((index, "boolop", *where, change))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            points.append((index, "not", *where, "not x -> x"))
        elif isinstance(node, ast.Constant) and id(node) in consts:
            points.append((index, "const", *where, f"{node.value} -> {node.value + 1}"))
        elif isinstance(node, ast.If) and isinstance(node.body[0], (ast.Raise, ast.Return)):
            body = node.body[0]
            kind = "raise" if isinstance(body, ast.Raise) else "return"
            points.append((index, "guard", body.lineno, body.col_offset, f"{kind} -> pass"))
    return points


class _Mutate(ast.NodeTransformer):
    def __init__(self, target: int):
        self.target = target
        self.index = {}

    def visit(self, node):
        if self.index.get(id(node)) == self.target:
            return self.apply(node)
        return super().visit(node)

    @staticmethod
    def apply(node):
        if isinstance(node, ast.Compare):
            node.ops = [_FLIP[type(node.ops[0])]()]
        elif isinstance(node, ast.BoolOp):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif isinstance(node, ast.UnaryOp):
            return node.operand
        elif isinstance(node, ast.Constant):
            node.value += 1
        elif isinstance(node, ast.If):
            node.body[0] = ast.Pass()
        return node


def mutant_source(source: str, index: int) -> str:
    tree = ast.parse(source)
    mutator = _Mutate(index)
    mutator.index = {id(node): i for i, node in enumerate(ast.walk(tree))}
    return ast.unparse(ast.fix_missing_locations(mutator.visit(tree)))


def _copy_tree(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    repo = dest / "repo"
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    return repo


# Third-party packages the tests import, loaded once here: each mutant's test run is a
# fork of this process, so it pays only for importing our own (mutated) code and for the
# tests themselves, not for numpy, onnx or cryptography again (most of a run's time).
_PRELOAD = ("pytest", "numpy", "onnx", "onnxruntime", "cbor2", "yaml", "cryptography.x509",
            "cryptography.hazmat.primitives.asymmetric.ec", "sqlalchemy", "fastapi",
            "fastapi.testclient", "httpx")


def _preload() -> None:
    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    ours = {"cards", "verifier", "attest", "registry", "redteam", "laminate", "enclave_sim"}
    leaked = sorted(n for n in sys.modules if n.split(".")[0] in ours)
    if leaked:  # a preloaded package imported our code: the mutants would not be seen
        raise SystemExit(f"preloading imported {leaked[0]}")


def _run_tests(repo: Path, tests: list[str], limit: float) -> tuple[str, float]:
    """Run ``tests`` against ``repo`` in a forked child: (outcome, seconds)."""
    args = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-o", "addopts=",
            *[f"tests/{t}" for t in tests]]
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: our packages come from the copy, nothing is cached on disk
        code = 3
        try:
            os.chdir(repo)
            os.environ["PYTHONPATH"] = str(repo)  # for tests that start subprocesses
            sys.path.insert(0, str(repo))
            sys.dont_write_bytecode = True
            os.setsid()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            import pytest
            code = int(pytest.main(args))
        finally:
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        seconds = time.monotonic() - start
        if done:
            break
        if seconds > limit:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", seconds
        time.sleep(0.05)
    code = os.waitstatus_to_exitcode(status)
    return {0: "survived", 1: "killed"}.get(code, f"error {code}"), seconds


def _tests(module: str, repo: Path) -> list[str]:
    return [t for t in MODULES[module] if (repo / "tests" / t).exists()]


def baseline_seconds(module: str, repo: Path) -> float:
    """How long the module's tests take unmutated; they must pass."""
    status, seconds = _run_tests(repo, _tests(module, repo), 900)
    if status != "survived":
        raise SystemExit(f"{module}: the unmutated tests do not pass ({status})")
    return seconds


def run_module(module: str, repo: Path, points, baseline: float, log) -> list[dict]:
    path = repo / module
    original = path.read_text(encoding="utf-8")
    tests = _tests(module, repo)
    limit = 3 * baseline + 10
    results = []
    try:
        for index, op, line, col, change in points:
            path.write_text(mutant_source(original, index), encoding="utf-8")
            outcome, seconds = _run_tests(repo, tests, limit)
            results.append({"module": module, "line": line, "col": col, "operator": op,
                            "change": change, "outcome": outcome, "seconds": round(seconds, 1)})
            log(f"{module}:{line}:{col} {op} {change}: {outcome} {seconds:.1f}s")
    finally:
        path.write_text(original, encoding="utf-8")
    return results


def summarise(results: list[dict]) -> dict:
    def count(rows, outcome):
        return sum(r["outcome"] == outcome for r in rows)
    survivors = [r for r in results if r["outcome"] == "survived"]
    equivalent = [r for r in survivors if r["equivalent"]]
    real = len(results) - len(equivalent)
    caught = count(results, "killed") + count(results, "timeout")
    return {"mutants": len(results), "killed": count(results, "killed"),
            "timeout": count(results, "timeout"), "survived": len(survivors),
            "equivalent": len(equivalent),
            "errors": len(results) - caught - len(survivors),
            "kill_rate_non_equivalent": round(caught / real, 4) if real else None}


def write_report(results: list[dict], out: Path) -> None:
    modules = sorted({r["module"] for r in results})
    minutes = sum(r["seconds"] for r in results) / 60
    report = {"command": "python bench/mutation.py", "test_minutes": round(minutes, 1),
              "total": summarise(results),
              "modules": {m: summarise([r for r in results if r["module"] == m])
                          for m in modules},
              "stale": [m for m in modules if _stale(m, [r for r in results if r["module"] == m])],
              "survivors": [r for r in results if r["outcome"] not in ("killed", "timeout")],
              "mutants": results}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    lines = ["# Mutation testing", "",
             f"`python bench/mutation.py`: {len(results)} mutants, {minutes:.0f} min of test "
             "runs. A timeout is a mutant that made a loop endless: caught.", "",
             "| module | mutants | killed | timeout | survived | equivalent | caught of non-equivalent |",
             "|---|---|---|---|---|---|---|"]
    for name, s in [*report["modules"].items(), ("total", report["total"])]:
        lines.append(f"| {name} | {s['mutants']} | {s['killed']} | {s['timeout']} | "
                     f"{s['survived']} | {s['equivalent']} | {s['kill_rate_non_equivalent']:.1%} |")
    if report["stale"]:
        lines += ["", "Changed since their run (their mutants are no longer the module's; run "
                  "them again): " + ", ".join(f"`{m}`" for m in report["stale"]) + "."]
    lines += ["", "## Survivors", ""]
    for r in report["survivors"]:
        why = f"equivalent: {r['equivalent']}" if r["equivalent"] else "not equivalent"
        lines.append(f"- `{r['module']}:{r['line']}` {r['operator']} `{r['change']}` "
                     f"({r['outcome']}): {why}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES),
                        help="only this module (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel workers (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mutation")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the JSON (after editing EQUIVALENT)")
    parser.add_argument("--survivors", action="store_true",
                        help="with --module: rerun only the mutants that survived the last "
                             "run (a test added can only kill more); the module must be "
                             "unchanged since")
    args = parser.parse_args(argv)
    if args.report_only:
        results = json.loads(args.out.with_suffix(".json").read_text())["mutants"]
        return _finish(results, args.out)
    modules = args.module or list(MODULES)
    previous = args.out.with_suffix(".json")
    kept = []
    if args.module and previous.exists():  # a rerun of some modules keeps the others' rows
        kept = [r for r in json.loads(previous.read_text())["mutants"]
                if r["module"] not in modules]
    plans = {m: mutation_points(ast.parse((ROOT / m).read_text(encoding="utf-8")))
             for m in modules}
    if args.survivors:
        if not args.module or not previous.exists():
            parser.error("--survivors needs --module and a previous run's results")
        rows = json.loads(previous.read_text())["mutants"]
        for m in modules:
            plans[m], keep = _survivors_only(m, plans[m], [r for r in rows if r["module"] == m])
            kept += keep
        modules = [m for m in modules if plans[m]]
    _preload()
    with tempfile.TemporaryDirectory(prefix="laminate-mutation-") as scratch:
        repos = [_copy_tree(Path(scratch) / f"w{i}") for i in range(args.jobs)]
        print(f"{sum(map(len, plans.values()))} mutants in {len(modules)} modules", flush=True)
        # A worker takes a whole module into its own copy of the tree, the largest first,
        # so no file is mutated twice at once and the run ends with the small modules.
        free = queue.Queue()
        for repo in repos:
            free.put(repo)

        done, lock = [], threading.Lock()

        def work(module):
            repo = free.get()
            try:
                rows = run_module(module, repo, plans[module], baselines[module],
                                  lambda s: print(s, flush=True))
            finally:
                free.put(repo)
            with lock:  # the report grows module by module: a cut-short run keeps them
                done.extend(rows)
                _finish(done + kept, args.out)
            return rows
        baselines = {m: baseline_seconds(m, repos[0]) for m in modules}
        order = sorted(modules, key=lambda m: -len(plans[m]) * baselines[m])
        with ThreadPoolExecutor(args.jobs) as pool:
            results = [r for rows in pool.map(work, order) for r in rows]
    return _finish(results + kept, args.out)


def _mutants_of(module: str) -> set:
    path = ROOT / module
    if not path.exists():
        return set()
    return {(line, col, op, change) for _i, op, line, col, change
            in mutation_points(ast.parse(path.read_text(encoding="utf-8")))}


def _stale(module: str, rows: list[dict]) -> bool:
    """Whether the module's mutants now differ from those its rows record."""
    return {(r["line"], r["col"], r["operator"], r["change"]) for r in rows} != \
        _mutants_of(module)


def _survivors_only(module: str, points, rows: list[dict]):
    """(the points that were not caught last time, the rows to keep); refuses a module
    whose mutants are not those of its last run, as its caught rows would be stale."""
    now = {(line, col, op, change): (index, op, line, col, change)
           for index, op, line, col, change in points}
    if _stale(module, rows):
        raise SystemExit(f"{module} changed since its last run: run it whole")
    caught = [r for r in rows if r["outcome"] in ("killed", "timeout")]
    again = set(now) - {(r["line"], r["col"], r["operator"], r["change"]) for r in caught}
    return [p for k, p in now.items() if k in again], caught


def _finish(results: list[dict], out: Path) -> int:
    for r in results:  # equivalence is judged by reading the survivor, not by the run
        r["equivalent"] = EQUIVALENT.get(f"{r['module']}:{r['line']}:{r['col']}:{r['operator']}")
    results.sort(key=lambda r: (r["module"], r["line"], r["col"], r["operator"]))
    write_report(results, out)
    print(json.dumps(summarise(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
