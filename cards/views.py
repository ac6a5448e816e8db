"""Human views of a card payload: YAML, Markdown and a standalone HTML page.

Views are for reading, never for trust: they are generated from the signed payload and
nothing ever parses them back. Every view of a card whose evidence comes from the
software simulator says so first, in words nobody can miss.
"""
from __future__ import annotations

import html
import math
import re

import yaml

SIM_BANNER = ("SIMULATED HARDWARE: this card's evidence comes from laminate's software "
              "attestation simulator, which anyone can run; it proves nothing about real "
              "hardware and a default policy rejects it.")
VIEW_NOTE = "View only: trust what laminate verify says of card.cbor, never this file."
_STATUSES = ("affirming", "warning", "contraindicated")


def _simulated(payload: dict) -> bool:
    evidence = payload.get("evidence") if isinstance(payload, dict) else None
    return isinstance(evidence, dict) and evidence.get("backend") == "sim"


def _printable(text: str) -> str:
    """Control and format characters shown as \\uXXXX: a claim is the provider's text,
    and raw ESC sequences (or CR, or bidi overrides) reaching a terminal or page could
    rewrite what is shown above them, the simulated-hardware banner included."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _readable(value):
    """Byte strings become hex and text becomes printable, so every view is plain text."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, dict):
        return {_printable(str(k)): _readable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_readable(v) for v in value]
    return value


def _section(payload, *path):
    value = payload
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def to_yaml(payload: dict) -> str:
    """The payload as YAML (byte strings as hex) under a comment that it is a view,
    with the simulated-hardware banner first when the evidence is from the simulator."""
    header = [f"# laminate property card. {VIEW_NOTE}"]
    if _simulated(payload):
        header.append(f"# {SIM_BANNER}")
    start = _section(payload, "claims", "start")
    if isinstance(start, dict) and start.get("kind") in _START_WORDS:
        header.append(f"# initial weights: {start['kind']}: {_START_WORDS[start['kind']]}")
    code = _section(payload, "claims", "training", "code")
    if isinstance(code, dict) and code.get("entry_point") is None:
        header.append("# entry point: none (no script measured)")
    body = yaml.safe_dump(_readable(payload), sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(header) + "\n" + body


# --- Markdown ---------------------------------------------------------------------------

def _md(value) -> str:
    """One table cell or inline value: no line breaks, pipes or markup survive."""
    if value is None:
        return "none"
    if isinstance(value, float):
        text = _number(value)
    elif isinstance(value, (bytes, bytearray)):
        text = bytes(value).hex()
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_plain_text(v) for v in value)
    else:
        text = str(value)
    text = _printable(" ".join(text.split()))
    return re.sub(r"([\\`*\[\]<>|~])", r"\\\1", text)


def _plain_text(value) -> str:
    return _number(value) if isinstance(value, float) else _printable(str(value))


def _number(value: float) -> str:
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.6g}"


def _table(rows, headers=("field", "value")) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines + [""]


_START_WORDS = {
    "random": "drawn by the wrapper from the attestation module's randomness",
    "parent": "a released model with a card (fine-tune, lineage)",
    "external": "EXTERNAL weights handed in: the card does not say how they were made",
}


def _start_rows(start: dict) -> list:
    kind = start.get("kind")
    rows = [("kind", f"{kind}: {_START_WORDS.get(str(kind), 'unknown')}")]
    for key in ("seed", "init", "card_sha256", "model_sha256", "sha256"):
        if key in start:
            rows.append((key.replace("_", " "), start[key]))
    return rows


def preprocessing_rows(prep: dict) -> list:
    """The preprocessing claim as (field, value) rows, its rule written out."""
    return [("raw records", prep.get("source")),
            ("rule", f"input = float32((raw - {prep.get('subtract')!r}) / "
                     f"{prep.get('divide')!r}), reshaped in C order"),
            ("input shape", prep.get("input_shape")), ("input dtype", prep.get("input_dtype")),
            ("class names", prep.get("class_names"))]


def _card_rows(payload: dict) -> list[tuple[str, list]]:
    """(section title, [(field, value)]) for the sections a reader cares about."""
    claims = _section(payload, "claims") or {}
    model = claims.get("model") or {}
    training = claims.get("training") or {}
    code = training.get("code") or {}
    evaluation = claims.get("evaluation") or {}
    evidence = payload.get("evidence") or {}
    sections = [("Model", [
        ("name", model.get("name")), ("format", model.get("format")),
        ("sha256", model.get("sha256")), ("size (bytes)", model.get("size")),
        ("parameters", model.get("parameters")), ("opset", model.get("opset")),
        ("inputs", [_tensor(t) for t in model.get("inputs") or []]),
        ("outputs", [_tensor(t) for t in model.get("outputs") or []])])]
    prep = model.get("preprocessing")
    if isinstance(prep, dict):
        sections.append(("Preprocessing (what the model expects)", preprocessing_rows(prep)))
    for split in ("train", "test"):
        data = _section(claims, "dataset", split) or {}
        schema_ = data.get("schema") or {}
        sections.append((f"Dataset: {split}", [
            ("name", data.get("name")), ("records", data.get("records")),
            ("features", schema_.get("features")), ("dtype", schema_.get("dtype")),
            ("classes", schema_.get("classes")), ("label histogram", data.get("label_histogram")),
            ("Merkle root", data.get("merkle_root"))]))
    entry = code.get("entry_point") or {}
    sections.append(("Start (initial weights)", _start_rows(claims.get("start") or {})))
    sections.append(("Training", [
        ("config sha256", training.get("config_sha256")),
        ("code identity (wrapper sha256)", code.get("wrapper_sha256")),
        ("wrapper files", len(code.get("wrapper_files") or {})),
        ("entry point", f"{entry.get('path')} ({entry.get('sha256')})" if entry
         else "none (no script measured)"),
        ("libraries", [f"{k} {(v or {}).get('version')} RECORD {(v or {}).get('record_sha256')}"
                       + (f", {len(v['modified'])} file(s) modified" if (v or {}).get("modified")
                          else "") for k, v in (code.get("libraries") or {}).items()]),
        ("framework", [f"{k} {v}" for k, v in (training.get("framework") or {}).items()])]))
    dp = _section(claims, "defenses", "dp")
    sections.append(("Differential privacy", [("enabled", "no")] if not dp else [
        (key.replace("_", " "), dp.get(key)) for key in (
            "mechanism", "epsilon", "delta", "noise_multiplier", "max_grad_norm",
            "sample_rate", "steps", "accountant", "privacy_accounting", "note")]))
    wm = _section(claims, "defenses", "watermark")
    sections.append(("Watermark", [("enabled", "no")] if not wm else [
        (key.replace("_", " "), wm.get(key)) for key in (
            "scheme", "commitment", "trigger_count", "classes", "schedule")]))
    adv = _section(claims, "defenses", "adversarial")
    if adv:
        sections.append(("Adversarial training", [(key.replace("_", " "), adv.get(key)) for key in (
            "method", "norm", "epsilon", "step_size", "steps", "train_fraction",
            "adversarial_accuracy", "test_records", "attack_seed", "examples_merkle_root")]))
    radio = _section(claims, "defenses", "radioactive")
    if radio:
        sections.append(("Radioactive data", [(key.replace("_", " "), radio.get(key)) for key in (
            "scheme", "fraction", "marked_records", "epsilon", "p_value", "loss_difference",
            "test", "feature_dim", "commitment", "carriers_sha256", "marked_merkle_root")]))
    sections.append(("Evaluation", [
        ("accuracy", evaluation.get("accuracy")),
        ("per-class accuracy", evaluation.get("per_class_accuracy")),
        ("test records", evaluation.get("test_records")),
        ("watermark accuracy", evaluation.get("watermark_accuracy"))]))
    sections.append(("Evidence", [
        ("backend", evidence.get("backend")),
        ("certificate chain", f"{len(evidence.get('cert_chain') or [])} certificate(s)"),
        ("events", len(evidence.get("event_log") or [])),
        ("schema version", payload.get("schema_version"))]))
    return sections


def _tensor(t) -> str:
    if not isinstance(t, dict):
        return str(t)
    shape = "x".join(str(d) for d in t.get("shape") or [])
    return f"{t.get('name')} [{shape}] {t.get('dtype')}"


def _event_rows(payload: dict) -> list[tuple]:
    log = _section(payload, "evidence", "event_log") or []
    return [(i + 1, e.get("register"), e.get("type"), _short(e.get("digest")))
            for i, e in enumerate(log) if isinstance(e, dict)]


def _short(digest) -> str:
    text = digest.hex() if isinstance(digest, (bytes, bytearray)) else str(digest)
    return text[:16] + "…" if len(text) > 16 else text


def _checks(verification) -> list[dict]:
    checks = verification.get("checks") if isinstance(verification, dict) else None
    return [c for c in checks or [] if isinstance(c, dict)]


def to_markdown(payload: dict, verification: dict | None = None) -> str:
    """The payload as a Markdown page: the banner for simulated evidence, the
    verification result when ``verification`` (a Result.to_dict()) is given, the claims
    and the event log. No card value can break a table cell or inject markup."""
    name = _section(payload, "claims", "model", "name") or "model"
    lines = [f"# Property card: {_md(name)}", ""]
    if _simulated(payload):
        lines += [f"> **{_md(SIM_BANNER)}**", ""]
    lines += [f"_{_md(VIEW_NOTE)}_", ""]
    if verification is not None:
        lines += [f"## Verification: {_md(verification.get('status'))}", "",
                  f"policy {_md(verification.get('policy_id'))}, tier "
                  f"{_md(verification.get('tier'))}, backend {_md(verification.get('backend'))}",
                  ""]
        lines += _table([(c.get("check"), c.get("status"), c.get("field"), c.get("reason"))
                         for c in _checks(verification)],
                        headers=("check", "status", "field", "reason"))
    for title, rows in _card_rows(payload):
        lines += [f"## {title}", ""] + _table(rows)
    lines += ["## Event log", ""] + _table(_event_rows(payload),
                                           headers=("#", "register", "type", "digest"))
    return "\n".join(lines)


# --- HTML -------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;width:100%;margin:0 0 1.5rem}
th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top;
overflow-wrap:break-word}
td:first-child{white-space:nowrap}
th{background:#f3f3f3}
.banner{background:#b00020;color:#fff;font-weight:bold;padding:1rem;border-radius:4px;
font-size:1.1rem;margin:1rem 0}
.note{color:#555;font-style:italic}
.status{font-weight:bold;padding:.1rem .4rem;border-radius:3px;white-space:nowrap}
.affirming{background:#d7f5dd;color:#0a5b1d}.warning{background:#fff1c2;color:#6b4d00}
.contraindicated{background:#ffd6d9;color:#8a0010}.unknown{background:#eee;color:#333}
.flag{background:#fff1c2;color:#6b4d00;font-weight:bold;padding:.2rem .4rem;margin:.2rem 0}
"""


def _h(value) -> str:
    if isinstance(value, float):
        value = _number(value)
    elif isinstance(value, (list, tuple)):
        value = ", ".join(_plain_text(v) for v in value)
    elif isinstance(value, (bytes, bytearray)):
        value = bytes(value).hex()
    elif value is None:
        value = "none"
    return html.escape(_printable(str(value)), quote=True)


def _status_badge(status) -> str:
    css = status if status in _STATUSES else "unknown"
    return f'<span class="status {css}">{_h(status)}</span>'


def _html_table(rows, headers=("field", "value"), badge_column=None) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = [_status_badge(c) if i == badge_column else _h(c) for i, c in enumerate(row)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# A class this far below the overall accuracy is flagged: an average can hide a class
# the model nearly never gets right.
CLASS_GAP = 0.10
_ALG_NAMES = {-19: "Ed25519", -9: "ESP256 (ECDSA P-256)", -8: "EdDSA", -7: "ES256"}


def highlights(payload: dict) -> list[str]:
    """What a reader should not miss: accounting that is not tight, weak classes."""
    found = []
    dp = _section(payload, "claims", "defenses", "dp")
    if isinstance(dp, dict) and dp.get("privacy_accounting") == "not tight":
        found.append(f"Privacy accounting is NOT TIGHT: epsilon {_plain_text(dp.get('epsilon'))} "
                     f"covers only part of training ({_plain_text(dp.get('note')) or 'see note'})")
    evaluation = _section(payload, "claims", "evaluation") or {}
    overall = evaluation.get("accuracy")
    if isinstance(overall, (int, float)):
        for i, value in enumerate(evaluation.get("per_class_accuracy") or []):
            if isinstance(value, (int, float)) and round(overall - value, 9) >= CLASS_GAP:
                found.append(f"Class {i}: accuracy {_number(float(value))}, "
                             f"{_number(float(overall - value))} below the overall "
                             f"{_number(float(overall))}")
    return found


def to_html(payload: dict, verification: dict | None = None,
            signer: dict | None = None) -> str:
    """A standalone HTML page of the payload (and of ``verification`` when given, and
    ``signer``: the envelope's {"kid": bytes, "alg": int}), every card value
    HTML-escaped; simulated evidence gets a banner at the top, then the highlights."""
    name = _section(payload, "claims", "model", "name") or "model"
    simulated = _simulated(payload) or bool(isinstance(verification, dict)
                                            and verification.get("simulated"))
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Property card: {_h(name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Property card: {_h(name)}</h1>"]
    if simulated:
        parts.append(f'<div class="banner" role="alert">{_h(SIM_BANNER)}</div>')
    parts.append(f'<p class="note">{_h(VIEW_NOTE)}</p>')
    flags = highlights(payload)
    if flags:
        parts.append('<ul class="flags" role="note">'
                     + "".join(f'<li class="flag">{_h(f)}</li>' for f in flags) + "</ul>")
    if signer is not None:
        alg = signer.get("alg")
        parts.append(f'<p class="signer">Signed by release key id {_h(signer.get("kid"))} '
                     f"({_h(_ALG_NAMES.get(alg, alg) if isinstance(alg, int) else alg)}); whether that key is trusted is "
                     f"{'the verification below' if verification is not None else 'not checked here'}.</p>")
    if verification is not None:
        status = verification.get("status") if isinstance(verification, dict) else None
        parts.append(f"<h2>Verification: {_status_badge(status)}</h2>")
        parts.append(f"<p>policy {_h(verification.get('policy_id'))}, tier "
                     f"{_h(verification.get('tier'))}, backend "
                     f"{_h(verification.get('backend'))}</p>")
        parts.append(_html_table(
            [(c.get("check"), c.get("status"), c.get("field"), c.get("reason"))
             for c in _checks(verification)],
            headers=("check", "status", "field", "reason"), badge_column=1))
    for title, rows in _card_rows(payload):
        parts.append(f"<h2>{_h(title)}</h2>" + _html_table(rows))
    parts.append("<h2>Event log</h2>" + _html_table(
        _event_rows(payload), headers=("#", "register", "type", "digest")))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
