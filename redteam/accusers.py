"""False accusers, and the dispute judge every claim in the red-team table goes through.

A claim is what an accuser hands an arbiter: a card (or nothing), an opening, and the
trigger set the accuser argues with. The judge does what a dispute does, in order:
  card       the card verifies under the arbiter's policy and carries a commitment;
  order      that commitment (the card's; a bare one without a card) was logged before
             the suspect was first registered or observed;
  opening    the opening matches that commitment (so the triggers come from the public
             generator, fixed before the suspect existed);
  ownership  the sequential binomial test on the regenerated triggers shows ownership.
Every check runs and is reported, so the table says which ones stop each attack. Beside
the verdict we report what the ownership test *alone* would conclude on the triggers the
accuser presents: the attacks of "False Claims against Model Ownership Resolution" pass
that test, which is why the other three checks exist. With rival claims (``dispute``) the
earliest passing commitment wins. The rule is the
one the registry applies (``verifier.disputes``), with every check run instead of
stopping at the first failure; here the log is an explicit list so the run stays offline.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from redteam.suspects import build_arch, fit
from verifier import disputes as rule
from verifier.disputes import CHECKS

# ---------------------------------------------------------------- the dispute log

@dataclass
class DisputeLog:
    """An append-only log of (index, kind, digest): "commitment" entries hold a watermark
    commitment (hex), "model" entries a model's SHA-256 (hex). Registering a card appends
    its commitment, then its model; observing a deployed model appends the model."""

    entries: list = field(default_factory=list)

    def append(self, kind: str, digest: str) -> int:
        self.entries.append((len(self.entries), kind, digest))
        return len(self.entries) - 1

    def register_card(self, commitment: str | None, model_sha256: str) -> None:
        if commitment:
            self.append("commitment", commitment)
        self.append("model", model_sha256)

    def first(self, kind: str, digest: str) -> int | None:
        return next((i for i, k, d in self.entries if k == kind and d == digest), None)

    def observe(self, model_sha256: str) -> int:
        """The suspect's first registration or observation (logged now if never seen)."""
        index = self.first("model", model_sha256)
        return self.append("model", model_sha256) if index is None else index

    def observe_endpoint(self, url: str) -> int:
        """A prediction URL's first sighting: its own suspect identity, as in the registry
        (answers over HTTP never prove which model file is behind them)."""
        index = self.first("endpoint", url)
        return self.append("endpoint", url) if index is None else index


# ---------------------------------------------------------------- claims and the judge

class PresentedTriggers:
    """The trigger set an accuser argues with, shaped like an opening so the very same
    ownership test runs on it (the "test alone" column); it opens its own commitment."""

    def __init__(self, x: np.ndarray, y: np.ndarray, parameters: dict, commitment: str):
        self._x, self._y = x, y
        self.parameters = parameters
        self.commitment = commitment

    def matches(self, commitment_hex: str) -> bool:
        return commitment_hex == self.commitment

    def triggers(self):
        return self._x, self._y


@dataclass
class Claim:
    strategy: str
    description: str
    card_bytes: bytes | None   # the card the accuser points to; None: a bare commitment
    opening: object            # a cards.watermark.Opening the accuser reveals
    presented: PresentedTriggers | None = None  # triggers argued with, when not the opening's
    endpoint: object = None    # a prediction URL's answers, when the claim is made over one
    url: str | None = None     # that URL: the suspect's identity in the dispute


@dataclass
class Judgement(rule.Judgement):
    """The dispute rule's judgement, with what the ownership test alone concludes."""

    alone: object = None       # OwnershipResult of the test alone on the presented triggers

    url: str | None = None     # set when the suspect was a URL, not the model file named

    @property
    def verdict(self) -> str:
        """Ownership of the model file accused; a win over a URL is a win over that URL
        only, never over a logged model digest it was not proven to serve."""
        return "shown" if self.won and self.url is None else "not shown"

    @property
    def stopped_by(self) -> str:
        if self.url is not None:
            return "identity"
        failed = ",".join(c for c in CHECKS if not self.checks[c][0])
        if failed:
            return failed
        return f"earlier commitment #{self.outranked_by}" if self.outranked_by is not None else "-"


def watermark_claim_of(card_bytes: bytes) -> dict | None:
    from cards.card import open_card

    return open_card(card_bytes).claims["defenses"]["watermark"]


def judge(claim: Claim, suspect_path, suspect_sha256: str, log: DisputeLog, policy,
          *, alpha: float) -> Judgement:
    """Judge ``claim`` against the suspect ONNX file by the dispute rule, every check run."""
    from verifier.appraise import appraise
    from verifier.ownership import ownership_test
    from verifier.suspect import OnnxSuspect

    suspect = OnnxSuspect(suspect_path) if claim.endpoint is None else claim.endpoint
    opening = claim.opening
    wm, problem, start, card_model = None, "no card: a bare commitment", None, None
    if claim.card_bytes is not None:
        result = appraise(claim.card_bytes, policy=policy)
        if result.status == "contraindicated":
            failed = [c.check for c in result.checks if c.status == "contraindicated"]
            problem = f"card does not verify ({', '.join(failed)})"
        else:
            from cards.card import open_card

            claims = open_card(claim.card_bytes).claims
            wm, start, card_model = (claims["defenses"]["watermark"], claims["start"],
                                     claims["model"]["sha256"])
            problem = None if wm is not None else "the card carries no watermark commitment"
    sealed = wm["commitment"] if wm else opening.commitment
    seen = log.observe(suspect_sha256) if claim.url is None else log.observe_endpoint(claim.url)
    judged = rule.judge_claim(card_problem=problem, commitment=sealed,
                              commitment_index=log.first("commitment", sealed),
                              suspect_index=seen, opening=opening, watermark=wm,
                              suspect=suspect, alpha=alpha, run_all=True, start=start,
                              card_model=card_model, suspect_sha256=suspect_sha256)
    presented = claim.presented or opening
    alone = ownership_test(presented, alone_claim(presented, wm), suspect, alpha=alpha)
    return Judgement(**vars(judged), alone=alone, url=claim.url)


def alone_claim(presented, wm: dict | None) -> dict:
    """The claim the test alone runs under: the presented opening's own parameters and
    commitment; for EWE, the train split its records are proven in (the accuser's own
    tree, else the card's)."""
    from cards.ewe import SCHEMES

    p = presented.parameters
    if p["scheme"] not in SCHEMES:
        return {"scheme": p["scheme"], "commitment": presented.commitment,
                "trigger_count": p["trigger_count"], "classes": p["classes"]}
    root = getattr(presented, "train_root", None)
    tree = (root, presented.train_records) if root else (wm["train_root"], wm["train_records"])
    return {"scheme": p["scheme"], "commitment": presented.commitment,
            "trigger_count": p["keys"] * p["per_key"], "keys": p["keys"], "classes": p["classes"],
            "train_root": tree[0], "train_records": tree[1]}


def dispute(claims: list[Claim], suspect_path, suspect_sha256: str, log: DisputeLog, policy,
            *, alpha: float) -> list[Judgement]:
    """Several claims over one suspect: the earliest passing commitment wins, the other
    passing claims are outranked (the rule's ``rank``)."""
    judged = [judge(c, suspect_path, suspect_sha256, log, policy, alpha=alpha) for c in claims]
    rule.rank(judged)
    return judged


# ---------------------------------------------------------------- accuser strategies

def fresh_opening(parameters: dict, rand=os.urandom, seed: bytes | None = None):
    """An opening the accuser makes up: its own seed and salt, committed by itself.
    `rand(n)` gives the accuser's random bytes (seeded for a reproducible table)."""
    from cards.watermark import SALT_BYTES, Opening

    return Opening.create(seed if seed is not None else rand(32), dict(parameters),
                          salt=rand(SALT_BYTES))


def wrong_opening(victim_card: bytes, parameters: dict, rand=os.urandom) -> Claim:
    """Copies someone's genuine, early card from the public registry and reveals an
    opening it invented for it."""
    return Claim("wrong-opening", "someone else's early card + an invented opening",
                 victim_card, fresh_opening(parameters, rand))


def suspect_labels(suspect, parameters: dict, log: DisputeLog, rand=os.urandom) -> Claim:
    """After seeing the suspect: inputs from the public generator, labels set to the
    suspect's own answers, committed (bare) afterwards."""
    opening = fresh_opening(parameters, rand)
    x, _ = opening.triggers()
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(suspect.predict(x), dtype=np.int64)
    log.append("commitment", opening.commitment)
    return Claim("suspect-labels", "triggers labelled with the suspect's own predictions",
                 None, opening, PresentedTriggers(x, y, parameters, opening.commitment))


def surrogates(x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int) -> list[nn.Module]:
    """The accuser's own models, trained on its own data, to craft transferable examples."""
    return [fit(build_arch(arch, seed + i), x, y, epochs=epochs, seed=seed + i)
            for i, arch in enumerate(("mlp", "cnn"))]


def adversarial(models: list[nn.Module], parameters: dict, log: DisputeLog, *,
                eps: float, steps: int, rand=os.urandom) -> Claim:
    """Targeted PGD against an ensemble of surrogates, starting from the public generator's
    own inputs and labels, so the presented set looks like a genuine trigger set; the
    examples transfer to models the accuser never touched."""
    opening = fresh_opening(parameters, rand)
    x0, y = opening.triggers()
    x0 = torch.as_tensor(np.asarray(x0, dtype=np.float32))
    target = torch.as_tensor(np.asarray(y, dtype=np.int64))
    low, high = parameters["value_range"]
    x = x0.clone()
    step = 2.5 * eps / steps
    for _ in range(steps):
        x.requires_grad_(True)
        loss = sum(nn.functional.cross_entropy(m(x), target) for m in models)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = x - step * grad.sign()
            x = torch.clamp(torch.min(torch.max(x, x0 - eps), x0 + eps), low, high)
    log.append("commitment", opening.commitment)
    return Claim("adversarial", f"transferable adversarial triggers (PGD, eps {eps:g}, "
                 f"{len(models)} surrogates)", None, opening,
                 PresentedTriggers(x.detach().numpy(), np.asarray(y, dtype=np.int64),
                                   parameters, opening.commitment))


def ground_seed(suspect, parameters: dict, card_bytes: bytes, tries: int,
                rand=os.urandom) -> Claim:
    """Grinds ``tries`` seeds of the public generator for the one whose triggers the
    suspect happens to answer best, then reveals it against a genuine early card. (In
    laminate every try would cost an attested training run; here it costs nothing, and
    still cannot open the card's commitment.)"""
    from cards.watermark import generate_triggers

    best, best_matches = None, -1
    for i in range(tries):
        seed = hashlib.sha256(b"grind" + i.to_bytes(8, "big") + rand(8)).digest()
        x, y = generate_triggers(seed, parameters)
        matches = int((np.asarray(suspect.predict(np.asarray(x, dtype=np.float32))) == y).sum())
        if matches > best_matches:
            best, best_matches = seed, matches
    return Claim("seed-grinding", f"best of {tries} ground seeds ({best_matches}/"
                 f"{parameters['trigger_count']} matches) on someone else's card",
                 card_bytes, fresh_opening(parameters, rand, best))


def laundering(card_bytes: bytes, opening) -> Claim:
    """The laundering thief: loads the victim's weights and "trains" them through the
    wrapper at lr 1e-300, so its genuine card names the victim's exact file; it registers
    that card before the owner does and claims the victim's model. Its card's start is
    external with the victim model's digest, which the dispute rule's start check refuses."""
    return Claim("laundering", "victim's weights 'trained' at lr 1e-300 through the wrapper "
                 "(byte-identical file), card registered before the owner's", card_bytes, opening)


class OwnLabelsEndpoint:
    """What a thief serves at its own prediction URL: its own opening's trigger labels
    (nearest trigger), whatever model it names."""

    batch_size = 8

    def __init__(self, opening, url: str):
        x, self._y = opening.triggers()
        self._x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        self.name = url

    def predict(self, x: np.ndarray) -> np.ndarray:
        flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        nearest = ((flat[:, None, :] - self._x[None, :, :]) ** 2).sum(-1).argmin(1)
        return np.asarray(self._y)[nearest]


def url_thief(thief_card: bytes, thief_opening, victim_sha256: str) -> Claim:
    """A thief holding its own genuine card points the arbiter at a URL answering its own
    trigger labels and names the victim's registered model digest. The dispute judges
    the URL (its own first sighting), so the victim's model is never the one found owned."""
    url = f"http://thief.invalid/predict/{victim_sha256[:12]}"
    return Claim("url-thief", "own genuine card + own trigger labels at a prediction URL, "
                 "naming the victim's model digest", thief_card, thief_opening,
                 endpoint=OwnLabelsEndpoint(thief_opening, url), url=url)
