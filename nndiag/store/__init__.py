"""The run store: SQLite in WAL mode, one file per run."""

from nndiag.store.reader import CorruptRunError, LoadedRun, RunNotFoundError, find_store, load_run
from nndiag.store.schema import SCHEMA_VERSION, STORE_FILENAME
from nndiag.store.writer import RunStore

__all__ = [
    "SCHEMA_VERSION",
    "STORE_FILENAME",
    "CorruptRunError",
    "LoadedRun",
    "RunNotFoundError",
    "RunStore",
    "find_store",
    "load_run",
]
