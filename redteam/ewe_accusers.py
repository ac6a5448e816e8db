"""False accusers against an EWE (or margin-trained EWE) card: the trigger-set
strategies of `redteam.accusers`, rebuilt for keys, positions and proven records.

An EWE accuser cannot choose its targets (they come from the seed), but an opening has
two more degrees of freedom than a trigger set: the pattern positions and the records.
So besides an invented opening and ground seeds on someone's early card, it picks, after
seeing the suspect, the positions and records the suspect already answers with the
targets ("chosen-records", the EWE form of labelling triggers with the suspect's own
answers), or perturbs its records towards the targets against its own surrogates and
builds its own "train split" of them ("adversarial"). Records must carry inclusion
proofs, so the accuser proves them in a tree of its own; its bare commitment is logged
after the suspect was seen. The judge reports what the exact test alone says on them.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from cards import ewe, merkle
from redteam.accusers import Claim


class Presented:
    """An accuser's opening with the train split its records are proven in (a tree of
    its own), so the test alone can check the proofs as it does for a card."""

    def __init__(self, opening, train_root: str, train_records: int):
        self._opening = opening
        self.train_root, self.train_records = train_root, train_records

    def __getattr__(self, name):
        return getattr(self._opening, name)


def opening_from(seed: bytes, params: dict, positions, records: np.ndarray, rand) -> Presented:
    """An opening over ``records`` (K*m, key-major, each of its key's source class),
    proven in a tree of exactly those records."""
    sources, _, _ = ewe.derive(seed, params)
    m = params["per_key"]
    leaves = [ewe.record_leaf(x, sources[i // m]) for i, x in enumerate(records)]
    indices = [list(range(k * m, (k + 1) * m)) for k in range(params["keys"])]
    proofs = [merkle.inclusion_proof(leaves, i) for i in range(len(leaves))]
    opening = ewe.create_opening(seed, params, positions, indices, records, proofs,
                                 salt=rand(ewe.SALT_BYTES))
    return Presented(opening, merkle.root_of(leaves).hex(), len(leaves))


def _pick(x_pool, y_pool, source: int, m: int, rng) -> np.ndarray:
    rows = np.flatnonzero(y_pool == source)
    return x_pool[rng.choice(rows, size=m, replace=len(rows) < m)]


def _corner(params: dict, k: int) -> list:
    edge = [d - params["patch"] for d in params["input_shape"][-2:]]
    return [k % (edge[0] + 1), (3 * k) % (edge[1] + 1)]


def _records(params: dict, x_pool, y_pool, seed: bytes) -> np.ndarray:
    """The accuser's records for ``seed``: per key, per_key of its own of the source class."""
    sources, _, _ = ewe.derive(seed, params)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed).digest()[:8], "little"))
    return np.concatenate([_pick(x_pool, y_pool, s, params["per_key"], rng) for s in sources])


def invented(params: dict, x_pool, y_pool, rand, seed: bytes | None = None) -> Presented:
    """A made-up opening: the accuser's seed, its own records, arbitrary positions."""
    seed = seed if seed is not None else rand(32)
    return opening_from(seed, params, [_corner(params, k) for k in range(params["keys"])],
                        _records(params, x_pool, y_pool, seed), rand)


def wrong_opening(card: bytes, params: dict, x_pool, y_pool, rand) -> Claim:
    o = invented(params, x_pool, y_pool, rand)
    return Claim("wrong-opening", "someone else's early EWE card + an invented opening",
                 card, o._opening, o)


def ground_seed(suspect, params: dict, card: bytes, x_pool, y_pool, tries: int, rand) -> Claim:
    """Grinds ``tries`` seeds for the one whose targets the suspect answers most often on
    the stamped records, then reveals it against a genuine early card."""
    best_seed, best_hits = b"", -1
    m = params["per_key"]
    for i in range(tries):
        seed = hashlib.sha256(b"grind" + i.to_bytes(8, "big") + rand(8)).digest()
        _, targets, patterns = ewe.derive(seed, params)
        records = _records(params, x_pool, y_pool, seed)
        x = np.concatenate([ewe.stamp(records[k * m:(k + 1) * m], patterns[k], _corner(params, k))
                            for k in range(params["keys"])])
        hits = int((np.asarray(suspect.predict(x.astype(np.float32))) == np.repeat(targets, m)).sum())
        if hits > best_hits:
            best_seed, best_hits = seed, hits
    best = invented(params, x_pool, y_pool, rand, best_seed)
    return Claim("seed-grinding", f"best of {tries} ground EWE seeds ({best_hits}/"
                 f"{params['keys'] * params['per_key']} targets hit) on someone else's card",
                 card, best._opening, best)


def chosen_records(suspect, params: dict, x_pool, y_pool, log, rand) -> Claim:
    """After seeing the suspect: per key, the pattern position and the m source-class
    records on which the suspect answers the key's target most often."""
    seed = rand(32)
    sources, targets, patterns = ewe.derive(seed, params)
    side, m = params["patch"], params["per_key"]
    h, w = params["input_shape"][-2:]
    positions, records = [], []
    for s, t, pattern in zip(sources, targets, patterns):
        rows = x_pool[y_pool == s]
        best = None
        for r in range(h - side + 1):
            for c in range(w - side + 1):
                p = np.asarray(suspect.predict(ewe.stamp(rows, pattern, (r, c)).astype(np.float32)))
                score = (int((p == t).sum()), -r, -c)
                if best is None or score > best[0]:
                    best = (score, (r, c), np.argsort(p != t, kind="stable")[:m])
        positions.append(list(best[1]))
        records.append(rows[best[2]] if len(best[2]) == m else
                       rows[np.resize(best[2], m)])
    o = opening_from(seed, params, positions, np.concatenate(records), rand)
    log.append("commitment", o.commitment)
    return Claim("chosen-records", "positions and records chosen after seeing the suspect's "
                 "answers, own tree, bare commitment", None, o._opening, o)


def adversarial(models: list[nn.Module], params: dict, x_pool, y_pool, log, *, eps: float,
                steps: int, rand) -> Claim:
    """Records perturbed towards their key's target (stamped, targeted PGD against the
    accuser's surrogates), proven in the accuser's own tree of those records."""
    o = invented(params, x_pool, y_pool, rand)
    sources, targets, patterns = o.keys()
    m = params["per_key"]
    x0 = torch.as_tensor(np.asarray(o.features, np.float32))
    target = torch.as_tensor(np.repeat(targets, m))
    low, high = params["value_range"]

    def stamped(x):
        return torch.as_tensor(np.concatenate([ewe.stamp(x[k * m:(k + 1) * m].numpy(), patterns[k], pos)
                                               for k, pos in enumerate(o.positions)]))

    x = x0.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        mask = (stamped(x.detach()) != x.detach()).float()      # pattern pixels stay fixed
        xs = x * (1 - mask) + stamped(x.detach()) * mask
        loss = sum(nn.functional.cross_entropy(model(xs), target) for model in models)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = torch.clamp(torch.min(torch.max(x - 2.5 * eps / steps * grad.sign(), x0 - eps),
                                      x0 + eps), low, high)
    forged = opening_from(o.seed, params, o.positions, x.detach().numpy(), rand)
    log.append("commitment", forged.commitment)
    return Claim("adversarial", f"records moved towards the targets (PGD, eps {eps:g}, "
                 f"{len(models)} surrogates), own tree, bare commitment", None,
                 forged._opening, forged)
