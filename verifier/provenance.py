"""What ran and what it started from: the start, entry point and library checks.

The wrapper's code identity says which laminate files measured the run; it does not say
which script drove them, which libraries computed the numbers, or where the initial
weights came from. Each of those is measured into the card (FORMAT.md, `start` and
`training.code`) and appraised here, so a policy can require an attested start, pin the
entry script and pin the installed libraries. What a measurement proves still depends
on the backend (README, "Trust"): on the simulator nothing, on a TPM on a normal host
the integrity of the measured log, inside a confidential VM that the code measured ran.
"""
from __future__ import annotations

from verifier.result import AFFIRMING, CONTRAINDICATED, WARNING, Check

START_FIELD = "claims.start"
ENTRY_FIELD = "claims.training.code.entry_point"
LIBRARIES_FIELD = "claims.training.code.libraries"


def check_start(claims: dict, policy) -> Check:
    """`start`: the start kind is one the policy accepts; an external start is said plainly."""
    start = claims["start"]
    kind = start["kind"]
    if kind == "random":
        what = (f"initial weights drawn by the wrapper ({start['init']}) from the attestation "
                f"module's randomness (seed {start['seed'][:16]}...)")
    elif kind == "parent":
        what = (f"fine-tuned from the released model {start['model_sha256'][:16]}... of card "
                f"{start['card_sha256'][:16]}... (verify that card for how it was made)")
    else:
        what = (f"initial weights handed in from outside (state_dict {start['sha256'][:16]}..., "
                f"ONNX {start['model_sha256'][:16]}...): the card says nothing about how "
                "they were made or what data they saw")
    if kind not in policy.require_start:
        return Check("start", CONTRAINDICATED, f"{START_FIELD}.kind",
                     f"start {kind} is not accepted by policy {policy.policy_id} (require_start: "
                     f"{', '.join(policy.require_start) or 'none'}): {what}")
    return Check("start", WARNING if kind == "external" else AFFIRMING, START_FIELD, what)


def check_entry_point(claims: dict, policy) -> Check:
    """`entry_point`: the script that drove the wrapper, pinned when the policy says so."""
    entry = claims["training"]["code"]["entry_point"]
    pinned = policy.reference_values.entry_point
    if entry is None:
        status = CONTRAINDICATED if policy.require_entry_point or pinned else WARNING
        return Check("entry_point", status, ENTRY_FIELD,
                     "entry point: none (no script was measured: code run from a REPL or "
                     "embedded could have changed anything in process)"
                     + (f"; policy {policy.policy_id} requires one" if status == CONTRAINDICATED
                        else ""))
    shown = f"{entry['path']} ({entry['sha256'][:16]}...)"
    if pinned and entry["sha256"] not in pinned:
        return Check("entry_point", CONTRAINDICATED, f"{ENTRY_FIELD}.sha256",
                     f"entry point {shown} is not a reference value of policy {policy.policy_id}")
    return Check("entry_point", AFFIRMING, f"{ENTRY_FIELD}.sha256",
                 f"entry point {shown} " + ("is a reference value of the policy" if pinned
                                             else "measured (not pinned by this policy)"))


def check_libraries(claims: dict, policy) -> Check:
    """`libraries`: no installed file differs from its RECORD; pinned RECORDs match."""
    libraries = claims["training"]["code"]["libraries"]
    for name, lib in libraries.items():
        if lib["modified"]:
            return Check("libraries", CONTRAINDICATED, f"{LIBRARIES_FIELD}[{name!r}].modified",
                         f"{name} {lib['version']}: {len(lib['modified'])} installed file(s) "
                         f"differ from its RECORD (first: {lib['modified'][0]})")
    for name, accepted in policy.reference_values.libraries.items():
        lib = libraries.get(name)
        if lib is None:
            return Check("libraries", CONTRAINDICATED, f"{LIBRARIES_FIELD}[{name!r}]",
                         f"policy {policy.policy_id} pins {name} but the card measured none")
        if lib["record_sha256"] not in accepted:
            digest = (lib["record_sha256"] or "none")[:16]
            return Check("libraries", CONTRAINDICATED, f"{LIBRARIES_FIELD}[{name!r}].record_sha256",
                         f"{name} {lib['version']} RECORD {digest}... is not a reference value "
                         f"of policy {policy.policy_id}")
    listed = ", ".join(f"{n} {lib['version']}" for n, lib in libraries.items()) or "none"
    pinned = ", ".join(policy.reference_values.libraries) or "none pinned"
    return Check("libraries", AFFIRMING, LIBRARIES_FIELD,
                 f"{listed}; every installed file matches its RECORD ({pinned})")
