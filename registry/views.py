"""Content negotiation and the HTML page of a registered card."""
from __future__ import annotations

import html
import json

from fastapi import Request

from cards.errors import LaminateError

from .db import CardRow
from .service import Service


def wants(request: Request, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("json", "cbor", "html"):
            raise LaminateError(f"format: expected json, cbor or html, got {fmt!r}")
        return fmt
    accept = request.headers.get("accept", "")
    if "application/cbor" in accept:
        return "cbor"
    if "text/html" in accept:
        return "html"
    return "json"


def card_html(service: Service, row: CardRow) -> str:
    from cards.card import open_card
    from cards.views import to_html
    from verifier.serving_card import is_serving_card
    if is_serving_card(row.card_bytes):
        appraisal = html.escape(json.dumps(json.loads(row.appraisal_json), indent=2))
        page = (f"<!doctype html><html><head><title>serving card</title></head><body>"
                f"<h1>Serving card</h1><p>serves model <code>{html.escape(row.model_sha256)}"
                f"</code></p><pre>{appraisal}</pre></body></html>")
    else:
        page = to_html(open_card(row.card_bytes).payload,
                       verification=json.loads(row.appraisal_json))
    size = service.log.size()
    section = (
        '<section id="transparency-log"><h2>Transparency log</h2><ul>'
        f"<li>card id: <code>{html.escape(row.card_id)}</code></li>"
        f"<li>log index: {row.leaf_index} (log size {size})</li>"
        + (f"<li>watermark commitment: <code>{html.escape(row.commitment)}</code> at log index "
           f"{service.commitment_index(row.commitment)}</li>" if row.commitment else "")
        + f"<li>service key id: <code>{service.key_id.hex()}</code></li></ul></section>")
    if "</body>" in page:
        return page.replace("</body>", section + "</body>", 1)
    return page + section
