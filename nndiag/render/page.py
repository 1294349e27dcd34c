"""One self-contained HTML page: inline styles, no scripts, nothing fetched from the network.

Every model-supplied string must pass through :func:`esc` before it reaches the page.

Example:
    >>> html = page("nndiag report", "<p>" + esc("<script>x</script>") + "</p>")
    >>> "&lt;script&gt;" in html and "<script>" not in html
    True
"""

from __future__ import annotations

import html as _html

STYLE = """
:root { --error: #b3261e; --warning: #a15c00; --info: #1f5fa8; --ok: #1b7f3b; --muted: #5f6368; }
* { box-sizing: border-box; }
body { font: 15px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Roboto, sans-serif; color: #202124;
       max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 34px 0 10px;
     border-bottom: 1px solid #e0e0e0; padding-bottom: 4px; } h3 { font-size: 16px; margin: 18px 0 6px; }
.meta { color: var(--muted); font-size: 13px; margin-bottom: 16px; }
.verdict { border-radius: 8px; padding: 14px 18px; margin: 14px 0 8px; font-size: 17px; }
.verdict.healthy { background: #e6f4ea; border-left: 6px solid var(--ok); }
.verdict.problems { background: #fce8e6; border-left: 6px solid var(--error); }
.verdict.warnings { background: #fef7e0; border-left: 6px solid var(--warning); }
.verdict.incomplete { background: #f1f3f4; border-left: 6px solid var(--muted); }
.diag { border: 1px solid #e0e0e0; border-left-width: 6px; border-radius: 6px; padding: 10px 14px; margin: 10px 0; }
.diag.error { border-left-color: var(--error); } .diag.warning { border-left-color: var(--warning); }
.diag.info { border-left-color: var(--info); } .diag.resolved { opacity: .75; }
.sev { font-weight: 700; text-transform: uppercase; font-size: 12px; letter-spacing: .04em; margin-right: 6px; }
.sev.error { color: var(--error); } .sev.warning { color: var(--warning); } .sev.info { color: var(--info); }
.code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-weight: 600; }
.layer { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; background: #f1f3f4; padding: 0 4px;
         border-radius: 3px; }
.steps { color: var(--muted); font-size: 13px; }
.evidence { color: var(--muted); font-size: 13px; margin: 4px 0; }
ul.fixes { margin: 4px 0 0 0; padding-left: 22px; }
figure { margin: 14px 0 22px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border-bottom: 1px solid #e8e8e8; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f8f9fa; position: sticky; top: 0; } td.name, th.name { text-align: left; font-family:
     "DejaVu Sans Mono", Menlo, Consolas, monospace; }
td.bad { color: var(--error); font-weight: 600; }
.scroll { max-height: 560px; overflow: auto; border: 1px solid #eee; }
.appeared { color: var(--error); } .disappeared { color: var(--ok); }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def esc(text: object) -> str:
    """HTML-escape any value (quotes included), for text and attribute positions alike.

    Example:
        >>> esc('<b a="1">&')
        '&lt;b a=&quot;1&quot;&gt;&amp;'
    """
    return _html.escape(str(text), quote=True)


def page(title: str, body: str, style: str = STYLE) -> str:
    """A complete HTML document; ``title`` is escaped, ``body`` must already be safe HTML."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # no network: images are data URIs; the policy makes any stray fetch fail loudly
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">\n"
        f"<title>{esc(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
