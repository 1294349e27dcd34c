"""Rule-based advisors: one module per family; importing this package registers them all.

Each rule owns its diagnosis code through :func:`~nndiag.rules.registry.rule` (severity, cause
order, what explains it, what it requires, its thresholds); see :mod:`nndiag.rules.registry`.
"""

import importlib
import pkgutil

from nndiag.rules.config import AdvisorConfig
from nndiag.rules.registry import RULES, Rule, rule
from nndiag.rules.view import RunView

# Every module of this package is imported (alphabetically), so a rule registers itself by being
# defined in any of them: adding a rule is one decorated function in one file.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "docs":  # the docs generator imports this package
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["RULES", "AdvisorConfig", "Rule", "RunView", "rule"]
