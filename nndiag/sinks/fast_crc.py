"""A C CRC-32C for TensorBoard's event files, in place of TensorBoard's pure-Python one.

TensorBoard's record writer (behind ``torch.utils.tensorboard.SummaryWriter`` and Lightning's
``TensorBoardLogger``) checksums every event twice with a CRC-32C written in Python, one byte per
loop turn: ~0.2 ms for the 1.6 KB event of one logging step of a small MLP, on TensorBoard's own
writer thread, holding the interpreter lock the training thread needs. :func:`install` replaces that
function (``tensorboard.summary.writer.record_writer.masked_crc32c``) with one computed by
``google-crc32c`` (C, ~0.4 us for the same event). The bytes written are the same: the replacement is
checked against the original on sample inputs first and not installed if any differs, nor when
``google-crc32c`` has no C implementation here, nor when ``NNDIAG_FAST_CRC=0`` is set. It applies to
every TensorBoard writer of the process (the user's own events are written faster too).

Example:
    >>> from nndiag.sinks import fast_crc
    >>> from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    >>> fast_crc.masked_crc32c(b"nndiag") == masked_crc32c(b"nndiag")
    True
    >>> fast_crc.install() in (True, False)  # False where google-crc32c has no C code, or NNDIAG_FAST_CRC=0
    True

"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

try:
    import google_crc32c
except ImportError:  # a core dependency; without it TensorBoard keeps its own function
    google_crc32c = None  # type: ignore[assignment]

_MASK = 0xFFFFFFFF
_SAMPLES = (b"", b"\x00", b"nndiag", bytes(range(256)) * 7)
_lock = threading.Lock()
_original: Callable[[Any], int] | None = None  # tensorboard's own function while ours is installed


def masked_crc32c(data: Any) -> int:
    """TFRecord's masked CRC-32C of ``data`` (bytes-like), computed by ``google-crc32c``."""
    x = google_crc32c.value(data if isinstance(data, bytes) else bytes(data))
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & _MASK


def install() -> bool:
    """Put :func:`masked_crc32c` into TensorBoard's record writer; True when it is in place (idempotent)."""
    global _original
    if os.environ.get("NNDIAG_FAST_CRC", "1").strip() == "0":
        return False
    with _lock:
        if _original is not None:
            return True
        try:
            from tensorboard.summary.writer import record_writer
        except ImportError:
            return False
        theirs = getattr(record_writer, "masked_crc32c", None)
        if google_crc32c is None or google_crc32c.implementation != "c" or theirs is None:
            return False  # the package's Python fallback is no faster than TensorBoard's
        if any(masked_crc32c(s) != theirs(s) for s in _SAMPLES):
            return False
        _original = theirs
        record_writer.masked_crc32c = masked_crc32c
        return True


def uninstall() -> None:
    """Put TensorBoard's own function back (tests)."""
    global _original
    with _lock:
        if _original is None:
            return
        from tensorboard.summary.writer import record_writer

        record_writer.masked_crc32c = _original
        _original = None


def installed() -> bool:
    """Whether :func:`install` replaced TensorBoard's function (and it was not put back)."""
    return _original is not None
