"""Self-contained HTML pages with embedded figures (used by the report and the sweep advisor).

* :mod:`nndiag.render.page`: the page skeleton, styles and escaping;
* :mod:`nndiag.render.figure`: matplotlib figures (object API, no pyplot state) as PNG data URIs.
"""
