"""nndiag's logger: ``logging.getLogger("nndiag")``, visible by default like Lightning's.

If neither the ``nndiag`` logger nor the root logger has handlers when nndiag first logs,
a stderr handler at INFO level is attached (as Lightning does for its own logger); configure
logging yourself to override it.

Example:
    >>> from nndiag.log import get_logger
    >>> get_logger().name
    'nndiag'
"""

from __future__ import annotations

import logging

_LOGGER = logging.getLogger("nndiag")


def get_logger() -> logging.Logger:
    """The ``nndiag`` logger, with a default stderr handler when logging is unconfigured."""
    if not _LOGGER.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        _LOGGER.addHandler(handler)
        _LOGGER.setLevel(logging.INFO)
        _LOGGER.propagate = False
    return _LOGGER
