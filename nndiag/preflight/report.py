"""``PreflightReport``: what :func:`nndiag.preflight` found, as data, text and HTML.

Example:
    >>> import pandas as pd
    >>> from nndiag.preflight.report import PreflightReport
    >>> table = pd.DataFrame({"layer": ["0", "1"], "kind": ["Linear", "Tanh"], "mean": [0.0, 0.0],
    ...                       "std": [0.9, 0.6], "dead_frac": [float("nan")] * 2, "sat_frac": [float("nan"), 0.01]})
    >>> report = PreflightReport(table=table, diagnoses=[], samples=64)
    >>> report.ok, report.to_dict()["table"][1]["dead_frac"] is None
    (True, True)
    >>> print(str(report).splitlines()[2])
    layer  kind     mean    std  dead   sat
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from nndiag.advisor import fails
from nndiag.diagnosis import Diagnosis
from nndiag.jsonable import clean
from nndiag.preflight.lr_range import LRFindResult
from nndiag.preflight.overfit import OverfitResult
from nndiag.render.page import esc

if TYPE_CHECKING:
    from nndiag.preflight.noise_scale import NoiseScaleProbe


@dataclass
class PreflightReport:
    """The babysitting checks before training: one forward pass, the overfit check, the learning-rate test.

    Attributes:
        table: one row per recorded layer in forward order (``layer``, ``kind``, ``mean``, ``std``,
            ``dead_frac``, ``sat_frac``; NaN where a statistic does not apply).
        diagnoses: :class:`~nndiag.Diagnosis` list, most severe and most causal first.
        samples: samples in the forward pass.
        input_mean: mean of the model input (``None`` for integer inputs such as token ids).
        input_std: its standard deviation.
        initial_loss: the loss of the untrained model on the batch (with a loss function and targets).
        num_classes: classes of a softmax classifier (given, or inferred from a cross-entropy loss).
        overfit: the overfit-one-batch result, or ``None`` when it did not run (see ``notes``).
        lr_find: the learning-rate range test result, or ``None`` when it did not run.
        notes: checks that were skipped, and why.
        noise_scale: the batch-size probe's result (``preflight(..., noise_scale=loader)``), or ``None``.
        model_class: class name of the model.
    """

    table: pd.DataFrame
    diagnoses: list[Diagnosis]
    samples: int | None = None
    input_mean: float | None = None
    input_std: float | None = None
    initial_loss: float | None = None
    num_classes: int | None = None
    overfit: OverfitResult | None = None
    lr_find: LRFindResult | None = None
    notes: list[str] = field(default_factory=list)
    noise_scale: NoiseScaleProbe | None = None
    model_class: str = ""

    @property
    def expected_loss(self) -> float | None:
        """The ln C of a C-way softmax classifier (the lecture's expected initial loss), else ``None``."""
        return math.log(self.num_classes) if self.num_classes else None

    @property
    def ok(self) -> bool:
        """No warning or error diagnosis, and the overfit check (if it ran) passed."""
        return not self.fails("warning")

    def fails(self, level: str) -> bool:
        """Whether a diagnosis is at least as severe as ``level`` (a failed overfit check counts as an error).

        Example:
            >>> info = Diagnosis("sigmoid_hidden_layer", "info", 0, "1", "...")
            >>> PreflightReport(pd.DataFrame(), [info]).fails("info"), PreflightReport(pd.DataFrame(), [info]).ok
            (True, True)
        """
        if self.overfit is not None and not self.overfit.passed:
            return True
        return fails(self.diagnoses, level)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN/Inf become ``None``) of everything in the report."""
        return clean(
            {
                "ok": self.ok,
                "model_class": self.model_class,
                "samples": self.samples,
                "input": {"mean": self.input_mean, "std": self.input_std},
                "initial_loss": self.initial_loss,
                "expected_loss": self.expected_loss,
                "num_classes": self.num_classes,
                "table": self.table.to_dict(orient="records"),
                "diagnoses": [d.to_dict() for d in self.diagnoses],
                "overfit": asdict(self.overfit) if self.overfit is not None else None,
                "lr_find": asdict(self.lr_find) if self.lr_find is not None else None,
                "notes": list(self.notes),
                "noise_scale": self.noise_scale.to_dict() if self.noise_scale is not None else None,
            }
        )

    # -- text ------------------------------------------------------------------------------------
    def __str__(self) -> str:
        lines = [self._title()]
        if self.input_mean is not None and self.input_std is not None:
            lines.append(f"input: mean {_num(self.input_mean)}, std {_num(self.input_std)}")
        lines += _table_text(self.table)
        if self.initial_loss is not None:
            lines.append(f"initial loss: {_num(self.initial_loss)}{self._expected_text()}")
        lines.append(_verdict(self.diagnoses))
        for d in self.diagnoses:
            lines.append(f"  {d.one_line()}")
            lines += [f"      - {fix}" for fix in d.suggestions[:2]]
        if self.overfit is not None:
            lines.append(f"overfit one batch: {'passed' if self.overfit.passed else 'FAILED'}: {self.overfit.message}")
        if self.lr_find is not None:
            lines.append(f"learning rate: {self.lr_find.message}")
        if self.noise_scale is not None:
            lines.append(f"batch size: {self.noise_scale.message}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        codes = ", ".join(d.code for d in self.diagnoses) or "none"
        overfit = "not run" if self.overfit is None else ("passed" if self.overfit.passed else "failed")
        return f"<PreflightReport {self.model_class}: {len(self.table)} layers, diagnoses: {codes}; overfit {overfit}>"

    def _title(self) -> str:
        who = f" {self.model_class}" if self.model_class else ""
        n = f" on {self.samples} samples" if self.samples is not None else ""
        return f"nndiag preflight{who}: one forward pass{n}, before training"

    def _expected_text(self) -> str:
        expected = self.expected_loss
        return f" (ln {self.num_classes} = {expected:.3g} expected at initialisation)" if expected else ""

    # -- HTML (notebooks) -----------------------------------------------------------------------
    def _repr_html_(self) -> str:
        head = "".join(f"<th>{esc(c)}</th>" for c in ("layer", "kind", "mean", "std", "dead", "sat"))
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{esc(v)}</td>"
                for v in (r.layer, r.kind, _num(r.mean), _num(r.std), _pct(r.dead_frac), _pct(r.sat_frac))
            )
            + "</tr>"
            for r in self.table.itertuples(index=False)
        )
        parts = [f"<h4>{esc(self._title())}</h4>"]
        if self.input_mean is not None and self.input_std is not None:
            parts.append(f"<p>input: mean {esc(_num(self.input_mean))}, std {esc(_num(self.input_std))}</p>")
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if self.initial_loss is not None:
            parts.append(f"<p>initial loss: {esc(_num(self.initial_loss))}{esc(self._expected_text())}</p>")
        parts.append(f"<p>{esc(_verdict(self.diagnoses))}</p>")
        if self.diagnoses:
            items = "".join(
                f"<li><b>{esc(d.severity)}</b> <code>{esc(d.code)}</code>"
                f"{' [' + esc(d.layer) + ']' if d.layer else ''}: {esc(d.message)}</li>"
                for d in self.diagnoses
            )
            parts.append(f"<ul>{items}</ul>")
        if self.overfit is not None:
            state = "passed" if self.overfit.passed else "FAILED"
            parts.append(f"<p>overfit one batch: <b>{state}</b>: {esc(self.overfit.message)}</p>")
        if self.lr_find is not None:
            parts.append(f"<p>learning rate: {esc(self.lr_find.message)}</p>")
        if self.noise_scale is not None:
            parts.append(f"<p>batch size: {esc(self.noise_scale.message)}</p>")
        parts += [f"<p><i>note: {esc(n)}</i></p>" for n in self.notes]
        return "<div>" + "".join(parts) + "</div>"


def _verdict(diagnoses: list[Diagnosis]) -> str:
    if not diagnoses:
        return "diagnoses: none"
    return f"diagnoses: {len(diagnoses)}"


def _table_text(table: pd.DataFrame) -> list[str]:
    cells = [["layer", "kind", "mean", "std", "dead", "sat"]]
    for r in table.itertuples(index=False):
        cells.append([str(r.layer), str(r.kind), _num(r.mean), _num(r.std), _pct(r.dead_frac), _pct(r.sat_frac)])
    widths = [max(len(row[i]) for row in cells) for i in range(6)]
    lines = []
    for row in cells:
        left = [row[i].ljust(widths[i]) for i in range(2)]
        right = [row[i].rjust(widths[i]) for i in range(2, 6)]
        lines.append("  ".join(left + right).rstrip())
    return ["", *lines]


def _num(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def _pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0%}"
