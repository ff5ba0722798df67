"""GET /: one static page to look at an answer (page.html): drop an X-ray, see the decision,
the calibrated probability, the model version and the heatmap over the image.

No build step and nothing fetched from elsewhere: the page's one script and one style sheet
are inline, allowed by their hashes in the Content-Security-Policy, and it talks to
`predict` on its own origin only. An answer's text is set as text, never as HTML.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

PAGE = Path(__file__).with_name("page.html")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@cache
def page() -> tuple[str, dict[str, str]]:
    """(the HTML, the response headers), read once per cold start."""
    html = PAGE.read_text(encoding="utf-8")
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", html, flags=re.DOTALL)
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_hash(script) for script in scripts),
            "style-src " + " ".join(_hash(style) for style in styles),
            "img-src data:",  # the empty favicon; images are drawn on canvases from blobs
            "connect-src 'self'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
        "Strict-Transport-Security": "max-age=31536000",
        "Cache-Control": "no-cache",
    }
    return html, headers
