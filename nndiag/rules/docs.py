"""The code table of ``docs/rules.md``, generated from the rule registry.

``python -m nndiag.rules.docs [docs/rules.md]`` rewrites the table between the
``<!-- codes:begin -->`` and ``<!-- codes:end -->`` markers; a test keeps the file equal to it.

Example:
    >>> from nndiag.rules.docs import code_table
    >>> code_table().splitlines()[2].startswith("| `nonfinite_input` | error |")
    True
"""

from __future__ import annotations

import sys
from pathlib import Path

import nndiag.rules  # noqa: F401  (registers the rule families)
from nndiag.rules.registry import RULES, cause_order

BEGIN, END = "<!-- codes:begin -->", "<!-- codes:end -->"


def code_table() -> str:
    """One Markdown row per registered code, in cause order: code, severity, broken, when it fires."""
    rows = ["| code | severity | fires when (key thresholds) |", "|---|---|---|"]
    for code in cause_order():
        spec = RULES[code]
        broken = " (run broken)" if spec.broken else ""
        rows.append(f"| `{code}` | {spec.severity_text}{broken} | {spec.summary} |")
    return "\n".join(rows)


def with_table(text: str) -> str:
    """``text`` (a ``docs/rules.md``) with its code table replaced by the registry's.

    Raises:
        ValueError: the markers are missing.
    """
    if BEGIN not in text or END not in text:
        raise ValueError(f"docs/rules.md must hold {BEGIN} and {END} around the code table.")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{code_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Rewrite the code table of the given file (default ``docs/rules.md``)."""
    path = Path((argv or sys.argv[1:] or ["docs/rules.md"])[0])
    path.write_text(with_table(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
