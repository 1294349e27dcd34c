"""JSON output for the CLI (:mod:`nndiag.jsonable`, re-exported).

Example:
    >>> dumps({"a": float("nan")})
    '{"a": null}'
"""

from nndiag.jsonable import clean, dumps

__all__ = ["clean", "dumps"]
