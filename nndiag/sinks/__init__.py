"""Where recorded rows go: memory (``cb.history``) and TensorBoard (the run store is in ``nndiag.store``)."""

from nndiag.sinks.memory import MemoryHistory
from nndiag.sinks.tensorboard import TensorBoardSink, diagnoses_markdown, tag_for

__all__ = ["MemoryHistory", "TensorBoardSink", "diagnoses_markdown", "tag_for"]
