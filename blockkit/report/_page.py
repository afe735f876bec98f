"""The report page: one self-contained HTML file (inline script, style and data; no request leaves it).

Every string from the run folder reaches the page only as JSON inside a non-executed
`<script type="application/json">` element, with `<`, `>` and `&` escaped, and the page script
puts it into the document with `textContent`, never as markup. A Content-Security-Policy
allows only this page's own script and style (by hash) and no network at all, so even a
mistake in the escaping could neither run a block's script nor send anything anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from typing import Any

from blockkit.report._assets import SCRIPT, STYLE

# The parts of a step's data that are read only when the step is shown.
HEAVY = ("features", "vectors", "quicklooks", "outputs", "log")


def _json_for_html(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _sha256(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


def render_page(data: dict[str, Any]) -> str:
    """The HTML of a report for this data (see model.ReportData.to_dict)."""
    run = data.get("run", {})
    # The graph and timeline need only a summary of each step; a step's features, files and
    # log are parsed when it is selected, so a run of 50 steps x 1,000 features opens fast.
    summary = dict(data, steps=[{k: v for k, v in step.items() if k not in HEAVY} for step in data.get("steps", [])])
    details = "".join(
        f"<script id=\"step-data-{i}\" type=\"application/json\">"
        f"{_json_for_html({k: step.get(k) for k in HEAVY})}</script>\n"
        for i, step in enumerate(data.get("steps", []))
    )
    title = html.escape(f"blockkit run {run.get('run_id', '')} ({run.get('status', '')})", quote=True)
    policy = (
        "default-src 'none'; img-src 'self' data: file:; "
        f"style-src {_sha256(STYLE)}; script-src {_sha256(SCRIPT)}; "
        "connect-src 'none'; form-action 'none'; base-uri 'none'"
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{html.escape(policy, quote=True)}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        "<noscript>This report needs JavaScript (it makes no network request).</noscript>\n"
        "<main id=\"app\" data-ready=\"0\"></main>\n"
        f"<script id=\"report-data\" type=\"application/json\">{_json_for_html(summary)}</script>\n"
        f"{details}"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
