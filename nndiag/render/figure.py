"""Matplotlib figures rendered to PNG data URIs, without touching pyplot's global state.

The object API (``matplotlib.figure.Figure`` with the Agg canvas) is used so that rendering
a report inside a user's process never changes their backend or open figures, and works on
machines without a display.

Example:
    >>> fig = new_figure(4, 2)
    >>> ax = fig.add_subplot()
    >>> _ = ax.plot([0, 1], [1, 0])
    >>> png_data_uri(fig).startswith("data:image/png;base64,")
    True
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any


def new_figure(width: float, height: float) -> Any:
    """A ``matplotlib.figure.Figure`` (inches) with the Agg canvas and constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_data_uri(fig: Any, dpi: int = 100) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (for ``<img src=...>``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plain_text(text: object) -> str:
    r"""A model-supplied string as literal matplotlib text: never mathtext, no control characters.

    Unescaped, a layer or hyperparameter named ``a$\frac{$`` makes matplotlib parse it as a formula
    and raise while the figure is saved, which would take down the whole report; so every ``$`` is
    escaped. Line breaks become spaces (a tick label stays one line) and other control characters
    are shown as ``\xNN`` (the fonts have no glyph for them).

    Example:
        >>> plain_text("fc$\\alpha$\n\x1b")
        'fc\\$\\alpha\\$ \\x1b'
    """
    out = str(text).replace("$", r"\$")
    return _CONTROL.sub(lambda m: " " if m.group() in "\r\n\t" else f"\\x{ord(m.group()):02x}", out)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def img_tag(fig: Any, alt: str, dpi: int = 100) -> str:
    """An ``<img>`` element with the figure embedded; ``alt`` is escaped."""
    from nndiag.render.page import esc

    return f'<img src="{png_data_uri(fig, dpi)}" alt="{esc(alt)}">'
