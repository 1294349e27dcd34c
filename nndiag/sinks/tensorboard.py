"""TensorBoard output: scalars ``nndiag/<stat>/<layer>``, optional histograms, diagnoses text.

Works with any SummaryWriter-like object (``torch.utils.tensorboard`` or tensorboardX),
in particular the ``experiment`` of Lightning's ``TensorBoardLogger``.

Logged tags:
    * ``nndiag/<stat>/<layer>`` for every per-layer statistic (act_mean, act_std, dead_frac,
      sat_frac, nonfinite, grad_norm, weight_norm, update_ratio, lr);
    * ``nndiag/<stat>`` for run-wide statistics (loss, grad_norm_total);
    * ``nndiag/act_hist/<layer>`` histograms when enabled;
    * ``nndiag/diagnoses``: the diagnoses (a table, then each message and first fix), written when one
      appears or resolves and once more at the end of the run with the final steps and status;
    * ``nndiag/target/update_ratio_low`` / ``_high``: the healthy update-ratio band (1e-4, 1e-2)
      at every logging step, for the dashboard's Margin charts;
    * the custom-scalar dashboard layout (:mod:`nndiag.sinks.dashboard`).

Example:
    >>> from nndiag.sinks.tensorboard import tag_for
    >>> tag_for("act_std", "encoder.0"), tag_for("loss", "")
    ('nndiag/act_std/encoder.0', 'nndiag/loss')

"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from nndiag import quantities as Q
from nndiag.diagnosis import Diagnosis
from nndiag.rows import LayoutCache, Rows
from nndiag.sinks import fast_crc
from nndiag.sinks.dashboard import BAND_TAGS, UPDATE_BAND, layout, write_layout


def tag_for(stat: str, layer: str) -> str:
    """TensorBoard tag of one statistic (see :func:`nndiag.quantities.tag_for`)."""
    return Q.tag_for(stat, layer)


def markdown_escape(text: str) -> str:
    r"""Escape a model-supplied string for a Markdown table cell.

    HTML is neutralised (``&``, ``<``, ``>`` become entities), Markdown specials are
    backslash-escaped, and pipes/newlines cannot break the table.

    Example:
        >>> markdown_escape("blocks|0 <b>x_y</b>")
        'blocks\\|0 &lt;b&gt;x\\_y&lt;/b&gt;'
    """
    out = str(text).replace("\\", "\\\\")
    out = out.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "|`*_[]#":
        out = out.replace(ch, "\\" + ch)
    return out.replace("\r", " ").replace("\n", " ")


def diagnoses_markdown(diagnoses: list[Diagnosis]) -> str:
    """The diagnoses as a Markdown table (severity, code, layer, steps, status, message, first fix)."""
    lines = ["| severity | code | layer | steps | status | message | first fix |", "|---|---|---|---|---|---|---|"]
    for d in diagnoses:
        fix = d.suggestions[0] if d.suggestions else ""
        steps = f"{d.step}-{d.last_step}" if d.last_step not in (None, d.step) else str(d.step)
        status = "resolved" if d.resolved else "open"
        cells = [d.severity, d.code, d.layer or "", steps, status, d.message, fix]
        lines.append("| " + " | ".join(markdown_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def diagnoses_tensorboard(diagnoses: list[Diagnosis]) -> str:
    r"""The diagnoses for TensorBoard's Text tab: a table of the short fields, then each message and first fix.

    The long texts sit below the table, not in it: TensorBoard lets a table cell break anywhere, so a
    message column squeezed the short columns until their words broke mid-word ("seve rity").

    Example:
        >>> d = Diagnosis("dead_units", "warning", 0, "net.1", "Most units never activate.", {}, ["Set the bias to 0."])
        >>> print(diagnoses_tensorboard([d]))
        | # | severity | code | layer | steps | status |
        |---|---|---|---|---|---|
        | 1 | warning | dead\_units | net.1 | 0 | open |
        <BLANKLINE>
        1. dead\_units (net.1): Most units never activate. First fix: Set the bias to 0.
    """
    rows = ["| # | severity | code | layer | steps | status |", "|---|---|---|---|---|---|"]
    notes = []
    for i, d in enumerate(diagnoses, 1):
        steps = f"{d.step}-{d.last_step}" if d.last_step not in (None, d.step) else str(d.step)
        status = "resolved" if d.resolved else "open"
        cells = [str(i), d.severity, d.code, d.layer or "", steps, status]
        rows.append("| " + " | ".join(markdown_escape(c) for c in cells) + " |")
        where = f" ({markdown_escape(d.layer)})" if d.layer else ""
        fix = f" First fix: {markdown_escape(d.suggestions[0])}" if d.suggestions else ""
        notes.append(f"{i}. {markdown_escape(d.code)}{where}: {markdown_escape(d.message)}{fix}")
    return "\n".join([*rows, "", *notes])


SUMMARIES_KEPT = 64  # Summary messages kept (one per distinct tag list; emptied when full)


class TensorBoardSink:
    """Writes rows to a SummaryWriter-like ``writer``; ``owns_writer`` closes it at the end.

    Puts the C CRC-32C into TensorBoard's record writer (:mod:`nndiag.sinks.fast_crc`).
    """

    def __init__(self, writer: Any, owns_writer: bool = False) -> None:
        with contextlib.suppress(Exception):  # an optimisation only: TensorBoard works without it
            fast_crc.install()
        self.writer = writer
        self.owns_writer = owns_writer
        self._layers: dict[str, None] = {}  # shown in the dashboard layout, in first-seen order
        self._params: dict[str, None] = {}
        self._shown: list[tuple[str, str | None, bool]] | None = None  # (code, layer, resolved) of the last table
        self._written: tuple[int, str] | None = None  # (step, text) of the last table written
        self._latest: tuple[int, list[Diagnosis]] | None = None  # the newest diagnoses, for the final table
        self._layouts: LayoutCache[list[str]] = LayoutCache()  # a packet layout's tags
        self._summaries: dict[tuple[str, ...], Any] = {}  # a step's tags -> its Summary message (see _summary)

    def write_rows(self, rows: Rows) -> None:
        """One scalar per row, batched into one event per step where the writer allows it.

        A TensorBoard ``Summary`` may carry many values; writing one event per step instead of
        one per scalar cuts the writer's CPU time several-fold (it shares the machine with
        training). Writers without ``_get_file_writer`` get plain ``add_scalar`` calls.
        """
        steps = rows.step.tolist()
        if not steps:
            return
        values = rows.value.tolist()
        tags = list(self._layouts.get(rows, self._tags_of))  # a copy: the band's tags are appended below
        if Q.UPDATE_RATIO in rows.stats:  # the healthy band of the dashboard's Margin charts
            ratio_steps = sorted({st for st, stat in zip(steps, rows.stats, strict=True) if stat == Q.UPDATE_RATIO})
            for st in ratio_steps:
                for tag, bound in zip(BAND_TAGS, UPDATE_BAND, strict=True):
                    tags.append(tag)
                    values.append(bound)
                    steps.append(st)
        file_writer = self._file_writer()
        if file_writer is None:
            for tag, value, step in zip(tags, values, steps, strict=True):
                self.writer.add_scalar(tag, value, step)
            return
        if min(steps) == max(steps):  # one step (every packet at every-step logging)
            groups = {steps[0]: (tags, values)}
        else:  # earlier steps' losses ride with a logging step's packet
            groups = {}
            for tag, value, step in zip(tags, values, steps, strict=True):
                group = groups.setdefault(step, ([], []))
                group[0].append(tag)
                group[1].append(value)
        for step, (step_tags, step_values) in groups.items():
            file_writer.add_summary(self._summary(step_tags, step_values), step)

    def _summary(self, tags: list[str], values: list[float]) -> Any:
        """A ``Summary`` of ``tags`` holding ``values``: one kept per tag list, its values overwritten.

        Building ~50 ``Summary.Value`` messages per step was most of this sink's CPU time (~60 of
        ~100 us per light MLP step); setting the floats of a kept message costs a third of that. The
        writer serialises the message inside ``add_summary`` (``torch.utils.tensorboard`` only: see
        :meth:`_file_writer`), so overwriting it afterwards changes nothing written.
        """
        key = tuple(tags)
        summary = self._summaries.get(key)
        if summary is None:
            from tensorboard.compat.proto.summary_pb2 import Summary

            summary = Summary(value=[Summary.Value(tag=tag) for tag in tags])
            if len(self._summaries) >= SUMMARIES_KEPT:
                self._summaries.clear()
            self._summaries[key] = summary
        for slot, value in zip(summary.value, values, strict=True):
            slot.simple_value = value
        return summary

    def _tags_of(self, rows: Rows) -> list[str]:
        """Tags of a packet layout not seen before (and the dashboard layout, if new layers appear)."""
        self._update_layout(rows)  # first: if it fails, nothing is cached and the next rows try again
        return [tag_for(stat, layer) for layer, stat in zip(rows.layers, rows.stats, strict=True)]

    def _update_layout(self, rows: Rows) -> None:
        """Write the dashboard layout when layers or parameters appear that it does not show yet."""
        layers = dict.fromkeys(lay for lay, st in zip(rows.layers, rows.stats, strict=True) if st == Q.ACT_STD and lay)
        params = dict.fromkeys(lay for lay, st in zip(rows.layers, rows.stats, strict=True) if st == Q.UPDATE_RATIO)
        if not (layers.keys() - self._layers.keys() or params.keys() - self._params.keys()):
            return
        self._layers.update(layers)
        self._params.update(params)
        write_layout(self.writer, layout(list(self._layers), list(self._params)))

    def _file_writer(self) -> Any:
        get = getattr(self.writer, "_get_file_writer", None)
        if get is None or type(self.writer).__module__.split(".")[0] != "torch":
            return None
        return get()

    def write_histograms(self, step: int, hists: list[tuple[str, str, np.ndarray, np.ndarray]]) -> None:
        """Histograms given as (layer, stat, edges, counts)."""
        for layer, stat, edges, counts in hists:
            num = float(counts.sum())
            if num <= 0 or not np.all(np.isfinite(edges)):
                continue
            centers = (edges[:-1] + edges[1:]) / 2
            self.writer.add_histogram_raw(
                tag_for(stat, layer),
                min=float(edges[0]),
                max=float(edges[-1]),
                num=num,
                sum=float((centers * counts).sum()),
                sum_squares=float((centers**2 * counts).sum()),
                bucket_limits=edges[1:].tolist(),
                bucket_counts=counts.tolist(),
                global_step=step,
            )

    def write_diagnoses(self, step: int, diagnoses: list[Diagnosis]) -> None:
        """The diagnoses as Markdown (:func:`diagnoses_tensorboard`) under ``nndiag/diagnoses`` at ``step``.

        Pass every update: the table is written when a diagnosis appeared, resolved or came back; the newest
        state (steps, counts) is kept and written once more by :meth:`close`, at the last step checked.
        """
        if not diagnoses:
            return
        self._latest = (step, list(diagnoses))
        shown = [(d.code, d.layer, d.resolved) for d in diagnoses]
        if shown != self._shown:
            self._shown = shown
            self._add_diagnoses(step, diagnoses)

    def _add_diagnoses(self, step: int, diagnoses: list[Diagnosis]) -> None:
        text = diagnoses_tensorboard(diagnoses)
        if self._written != (step, text):
            self.writer.add_text("nndiag/diagnoses", text, step)
            self._written = (step, text)

    def write_final_diagnoses(self) -> None:
        """The table once more, with the final steps and status of every diagnosis (end of the run)."""
        if self._latest is not None:
            self._add_diagnoses(*self._latest)

    def flush(self) -> None:
        """Flush the writer's event file."""
        flush = getattr(self.writer, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        """Write the final diagnoses table, flush, and close the writer if nndiag created it."""
        self.write_final_diagnoses()
        self.flush()
        if self.owns_writer:
            self.writer.close()
