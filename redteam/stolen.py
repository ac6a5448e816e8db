"""Every stolen copy the red team builds from one victim, in table order.

White-box copies (as is, fine-tuned, pruned, weight noise, distilled), extraction
through the victim's released ONNX file behind a label-only API (Tramèr et al.'s
adaptive retraining; Knockoff-style extraction with the thief's own in-distribution
records and with out-of-distribution queries, at ``budget`` and ten times that, into the
victim's architecture and another one; extraction then fine-tuning or pruning) and
behind a probability API (Tramèr et al.'s equation solving, a softmax model solved from
the answers; a fresh MLP trained on them), and the watermark-removal attacks that treat
the watermark as a backdoor (idle-neuron pruning, fine-pruning, Neural Cleanse).
"""
from __future__ import annotations

import numpy as np

from redteam import suspects as sus
from redteam import thieves as th


def build(victim_model, victim_file, part, sizes, seed: int) -> list[sus.Stolen]:
    """The stolen copies of ``victim_model`` (released as ``victim_file``)."""
    from verifier.suspect import OnnxSuspect

    xp, yp = part.x_pool, part.y_pool
    rng = np.random.default_rng(seed + 11)
    few = rng.choice(len(xp), size=round(0.1 * len(part.y_victim)), replace=False)
    labels = sus.LabelApi(OnnxSuspect(victim_file))
    out = [
        sus.as_is(victim_model),
        sus.fine_tune(victim_model, xp[few], yp[few], epochs=sizes.epochs, seed=seed + 1),
        *(sus.prune(victim_model, f) for f in (0.3, 0.5, 0.7)),
        *(sus.weight_noise(victim_model, s, seed + 2) for s in (0.1, 0.3)),
        *(sus.distill(victim_model, xp, arch=a, epochs=sizes.epochs, seed=seed + 3)
          for a in ("mlp", "cnn")),
        sus.extract_labels(sus.LabelApi(OnnxSuspect(victim_file)), xp, budget=sizes.budget,
                           arch="mlp", epochs=sizes.epochs, seed=seed + 4),
        sus.extract_logits(sus.LogitsApi(victim_file), xp, budget=sizes.budget,
                           arch="mlp", epochs=sizes.epochs, seed=seed + 5),
        sus.solve_equations(sus.LogitsApi(victim_file), xp, budget=sizes.budget, seed=seed + 6),
    ]
    shape = sus.INPUT_SHAPE
    for budget in (sizes.budget, 10 * sizes.budget):
        for kind, arch in (("in", "mlp"), ("in", "cnn"), ("ood", "mlp")):
            before = labels.queries
            model = th.knockoff(labels, xp, budget=budget, kind=kind, arch=arch, shape=shape,
                                classes=sus.CLASSES, epochs=sizes.epochs, seed=seed + budget)
            where = "own records (disjoint from the victim's)" if kind == "in" else \
                "out-of-distribution inputs"
            out.append(sus.Stolen(f"knockoff-{kind}-{budget}-{arch}", f"label-only API, "
                                  f"{budget} queries on {where}, a fresh {arch}", model,
                                  labels.queries - before))
    base = next(s for s in out if s.name == f"knockoff-in-{sizes.budget}-mlp")
    out += [
        sus.Stolen("knockoff+finetune", "Knockoff copy fine-tuned on own labelled records",
                   th.fit(th.copy.deepcopy(base.model), xp[few], yp[few], epochs=3,
                          seed=seed + 7, lr=1e-3), base.queries),
        sus.Stolen("knockoff+prune-30", "Knockoff copy, 30% magnitude pruning",
                   th.magnitude_prune(base.model, 0.3), base.queries),
        sus.Stolen("prune-idle-50", "50% of last-layer neurons idle on own data silenced",
                   th.prune_idle(victim_model, xp, 0.5)),
        sus.Stolen("fine-prune-50", "fine-pruning (Liu et al.): idle pruning, then fine-tuning",
                   th.fine_prune(victim_model, xp[few], yp[few], fraction=0.5, epochs=3,
                                 seed=seed + 8)),
    ]
    cleansed, target = th.neural_cleanse(victim_model, xp[:300], yp[:300], sus.CLASSES,
                                         steps=sizes.nc_steps, seed=seed + 9, epochs=3)
    out.append(sus.Stolen("neural-cleanse", f"Neural Cleanse (Wang et al.): reversed trigger "
                          f"of class {target} unlearned", cleansed))
    return out
