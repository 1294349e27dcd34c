"""Compatibility names: the advisor-option coercion now lives in :mod:`nndiag.options`.

Example:
    >>> from nndiag.integrations.advice_options import build_advice
    >>> build_advice(True, None, None, ()).advisor.config.dead_frac
    0.5
"""

from nndiag.options import AdvisorConfigLike, advisor_config, build_advice, check_num_classes, halt_codes

__all__ = ["AdvisorConfigLike", "advisor_config", "build_advice", "check_num_classes", "halt_codes"]
