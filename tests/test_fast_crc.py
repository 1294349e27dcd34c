"""The C CRC-32C put into TensorBoard's record writer writes the same bytes, and stays out where it must."""

from __future__ import annotations

import io
import os
import random

import pytest
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow
from tensorboard.summary.writer import record_writer
from torch.utils.tensorboard import SummaryWriter

from nndiag.sinks import fast_crc
from nndiag.sinks.tensorboard import TensorBoardSink

google_crc32c = pytest.importorskip("google_crc32c")
needs_c = pytest.mark.skipif(google_crc32c.implementation != "c", reason="google-crc32c without its C code here")


@pytest.fixture(autouse=True)
def _restore():
    """Each test starts and ends with TensorBoard's own function."""
    fast_crc.uninstall()
    yield
    fast_crc.uninstall()


def test_same_checksum_as_tensorboard_for_many_inputs():
    rng = random.Random(0)
    theirs = pywrap_tensorflow.masked_crc32c
    samples = [b"", b"\x00", b"\xff" * 3] + [rng.randbytes(rng.randrange(0, 5000)) for _ in range(200)]
    for data in samples:
        assert fast_crc.masked_crc32c(data) == theirs(data)
    assert fast_crc.masked_crc32c(bytearray(b"abc")) == theirs(b"abc")
    assert fast_crc.masked_crc32c(memoryview(b"abcdef")[1:4]) == theirs(b"bcd")


@needs_c
def test_record_bytes_identical_with_and_without():
    payloads = [os.urandom(n) for n in (0, 1, 40, 1600, 9000)]

    def written() -> bytes:
        buf = io.BytesIO()
        rw = record_writer.RecordWriter(buf)
        for p in payloads:
            rw.write(p)
        return buf.getvalue()

    plain = written()
    assert fast_crc.install() and fast_crc.installed()
    assert record_writer.masked_crc32c is fast_crc.masked_crc32c
    assert written() == plain


@needs_c
def test_sink_installs_it_and_tensorboard_reads_the_file_back(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    TensorBoardSink(writer)
    assert fast_crc.installed()
    for step in range(5):
        writer.add_scalar("nndiag/loss", 1.0 / (step + 1), step)
    writer.close()
    fast_crc.uninstall()  # the reader checks every record with TensorBoard's own pure-Python CRC
    (path,) = list(tmp_path.glob("events.out.tfevents.*"))
    reader = pywrap_tensorflow.PyRecordReader_New(str(path))
    for _ in range(6):  # the file-version event and five scalars; a CRC mismatch raises DataLossError
        reader.GetNext()
    with pytest.raises(errors.OutOfRangeError):  # and nothing after them
        reader.GetNext()


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("NNDIAG_FAST_CRC", "0")
    theirs = record_writer.masked_crc32c
    assert fast_crc.install() is False
    assert record_writer.masked_crc32c is theirs and not fast_crc.installed()


@needs_c
def test_not_installed_when_it_disagrees(monkeypatch):
    theirs = record_writer.masked_crc32c
    monkeypatch.setattr(fast_crc, "masked_crc32c", lambda data: 0)
    assert fast_crc.install() is False
    assert record_writer.masked_crc32c is theirs


@needs_c
def test_install_is_idempotent_and_uninstall_restores():
    theirs = record_writer.masked_crc32c
    assert fast_crc.install() and fast_crc.install()
    fast_crc.uninstall()
    assert record_writer.masked_crc32c is theirs
