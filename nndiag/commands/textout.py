r"""Text output of the CLI: strings from a model, a run or a study cannot drive the terminal.

A layer named ``"fc\x1b]0;title\x07"`` printed raw would retitle the terminal, move the cursor,
clear the screen or overwrite earlier lines (``\r``); bidirectional-override characters would
reorder what is shown. :func:`terminal_safe` writes each such character as a visible escape; newlines
and tabs, which nndiag's own layout uses, are kept. JSON output (``--json``) needs nothing: ``json``
escapes every control character.

Example:
    >>> terminal_safe("fc\x1b[2J\rx\tok\u202e\n")
    'fc\\x1b[2J\\x0dx\tok\\u202e\n'
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: object) -> str:
    """``text`` with terminal control and bidi-override characters shown as escapes (newline and tab kept)."""
    return _UNSAFE.sub(_escape, str(text))


def echo(text: object = "") -> None:
    """``print`` for the CLI's human-readable output, through :func:`terminal_safe`."""
    print(terminal_safe(text))
