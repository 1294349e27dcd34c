"""One module per ``nndiag`` sub-command; each exposes ``register(subparsers)``.

``register`` adds the sub-command's parser and sets ``run`` (``args -> exit code``) as its
default, so :mod:`nndiag.cli` only lists the modules. Commands raise
:class:`~nndiag.store.reader.RunNotFoundError`, :class:`~nndiag.store.reader.CorruptRunError`,
``ValueError`` or ``OSError`` for bad input; the CLI turns them into a one-line message and
exit code 2.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PROBLEMS = 1  # --fail-on: an open diagnosis at or above the level
EXIT_BAD_INPUT = 2

__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "EXIT_PROBLEMS"]
