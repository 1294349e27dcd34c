"""Acting on a diagnosis: roll back to a good state and cool down on divergence, skip NaN/Inf batches.

Off by default; ``remedy=True`` (or a :class:`RemedyConfig`) on ``DiagnosticsCallback``, ``Monitor``
or the Hugging Face ``NndiagCallback``. See docs/remedy.md.
"""

from nndiag.remedy.config import DEFAULT_CODES, RemedyConfig, RemedyLike, remedy_config
from nndiag.remedy.records import Remedy, remedied_diagnosis
from nndiag.remedy.runner import RemedyRunner, saved_state, with_state

__all__ = [
    "DEFAULT_CODES",
    "Remedy",
    "RemedyConfig",
    "RemedyLike",
    "RemedyRunner",
    "remedied_diagnosis",
    "remedy_config",
    "saved_state",
    "with_state",
]
