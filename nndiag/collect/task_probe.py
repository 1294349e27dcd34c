"""``TaskProbe``: sees what the model is asked to do, on logging steps only.

It records three things (the functions are in :mod:`nndiag.collect.task`):

* the **model output** (the output of the last module the forward pass called: the first floating
  tensor, ``logits`` of a Hugging Face ``ModelOutput``): its mean, std, min, max and spread across
  samples, on the device, as run-wide statistics of every logging step (``output_*``);
* the **targets** (``Monitor.step(loss, target=y)``, the Lightning batch, or a ``labels`` keyword
  of the model's forward): summarised on the device on the first ``samples`` logging steps that
  have them, decoded then (one small host transfer each, ``samples`` times per run) and merged into
  the task facts: dtype, shape, range, mean/std, whether they look like class indices,
  probabilities or one-hot rows, the class balance;
* the **loss kind**, read from the loss tensor's autograd graph (a few attribute reads; no
  reference to the graph is kept), recorded when first seen and whenever it changes.

From these, the task facts also hold the loss of the best constant prediction (``baseline_loss``:
the targets' variance for MSE, the entropy of the class prior for cross-entropy) and an output
against target shape mismatch (``[N, 1]`` against ``[N]``). Everything is optional: no target, a
custom loss or a dict output just leave the facts unknown.

It has no hook of its own: the activation collector's hooks hand it the forward's keywords
(:meth:`TaskProbe.saw_input`, for a ``labels`` keyword) and each recorded module's output
(:meth:`TaskProbe.saw_output`; the last one is the model's output) on logging steps.

Example:
    >>> import torch, torch.nn as nn
    >>> from nndiag.collect.task_probe import TaskProbe
    >>> from nndiag.guard import ErrorGuard
    >>> model = nn.Sequential(nn.Linear(3, 1), nn.Sigmoid())
    >>> probe = TaskProbe(ErrorGuard())
    >>> probe.arm()
    >>> x, y = torch.randn(8, 3), torch.randn(8, 1) * 5
    >>> out = model(x)
    >>> probe.saw_output(out)
    >>> loss = nn.functional.mse_loss(out, y)
    >>> probe.note_target(y); probe.note_loss(loss)
    >>> [stat for _, stat in probe.pack()[0]]
    ['output_mean', 'output_std', 'output_min', 'output_max', 'output_spread']
    >>> task = probe.facts_update()
    >>> task["loss"]["kind"], task["target"]["looks_like"], task["output"]["shape"]
    ('mse', 'continuous', [8, 1])
    >>> probe.disarm()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from nndiag import quantities as Q
from nndiag.collect.task import (
    LossKind,
    baseline_loss,
    broadcast_confirmed,
    loss_kind,
    loss_target,
    output_finish,
    output_pack,
    pick_output,
    shape_mismatch,
    target_finish,
    target_pack,
)
from nndiag.guard import ErrorGuard

OUTPUT_STATS = Q.OUTPUT_STATS  # the order of output_pack's first five values
TARGET_KEYS = ("labels", "label", "target", "targets", "y")  # batch dict keys that hold targets


class TaskProbe:
    """Output statistics on every logging step; targets and loss kind summarised into task facts.

    Args:
        guard: where internal errors go (never raised into training).
        samples: logging steps whose targets are summarised into the facts.
    """

    def __init__(self, guard: ErrorGuard, samples: int = 8) -> None:
        self.guard = guard
        self.samples = samples
        self._armed = False
        self._last_output: Any = None  # the latest recorded module's output in this logging step's forward
        self._out: tuple[torch.Tensor, tuple[int, ...]] | None = None
        self._target: tuple[torch.Tensor, tuple[int, ...], torch.dtype] | None = None
        self._loss: LossKind | None = None
        self._targets: list[dict[str, Any]] = []
        self._output_facts: dict[str, Any] | None = None
        self._loss_facts: dict[str, Any] | None = None
        self._loss_kind: LossKind | None = None
        self._losses_seen = 0  # logging steps whose loss graph was read
        self._sent: dict[str, Any] | None = None

    # -- what the activation collector passes (logging steps only) -------------------------
    def arm(self) -> None:
        """A logging step begins: look at the next output, target and loss."""
        self._armed = True

    def disarm(self) -> None:
        """The batch ended: ignore outputs until the next logging step."""
        self._armed = False

    def saw_input(self, kwargs: Mapping[str, Any]) -> None:
        """The root module's forward keywords: a ``labels`` (``target``, ...) tensor is the batch's targets."""
        labels = next((kwargs.get(k) for k in TARGET_KEYS if isinstance(kwargs.get(k), torch.Tensor)), None)
        if labels is not None:
            self.note_target(labels)

    def saw_output(self, output: Any) -> None:
        """A recorded module's output (kept by reference; the last one of the forward is the model's output)."""
        if self._armed:
            self._last_output = output

    def release(self) -> None:
        """Drop the references to this step's tensors."""
        self._last_output = None
        self._out = self._target = None

    # -- what the adapters pass ----------------------------------------------------------
    def note_target(self, target: Any) -> None:
        """The targets of this batch (summarised on the first ``samples`` logging steps that have them)."""
        if not self._armed or self._target is not None or len(self._targets) >= self.samples:
            return
        if isinstance(target, torch.Tensor) and target.numel() > 0 and not target.is_complex():
            self._target = (target_pack(target), tuple(int(s) for s in target.shape), target.dtype)

    def note_loss(self, loss: Any) -> None:
        """This batch's loss tensor: its kind from the graph; its saved target if no target was passed."""
        if not self._armed or self._loss is not None or getattr(loss, "grad_fn", None) is None:
            return
        if self._losses_seen >= self.samples and len(self._targets) >= self.samples:
            return  # the loss kind is known: walking the graph again would cost every logging step
        self._losses_seen += 1
        self._loss = loss_kind(loss)
        if self._target is None:
            saved = loss_target(loss)
            if saved is not None:
                self.note_target(saved)

    # -- at the end of a logging step ------------------------------------------------------
    def pack(self, output: bool = True) -> tuple[list[tuple[str, str]], list[torch.Tensor]]:
        """This logging step's output statistics: ``(layer, stat)`` keys and 0-d device tensors.

        ``output=False`` (a light logging step): none; the output seen is dropped unmeasured.
        """
        if not output:
            self._last_output = None
            return [], []
        out, self._last_output = pick_output(self._last_output), None
        if out is not None and out.numel() > 0:
            self._out = (output_pack(out), tuple(int(s) for s in out.shape))
        if self._out is None:
            return [], []
        values = self._out[0]
        return [("", s) for s in OUTPUT_STATS], list(values.unbind()[: len(OUTPUT_STATS)])

    def facts_update(self) -> dict[str, Any] | None:
        """The task facts if this logging step changed them (else ``None``); resets the step's captures.

        Decoding a target summary moves it to the host: done on at most ``samples`` logging steps.
        """
        out, target, loss = self._out, self._target, self._loss
        self._out = self._target = None
        self._loss = None
        if target is None and loss is None and (out is None or self._output_facts is not None):
            return None  # nothing new this step (most logging steps): no facts to rebuild and compare
        if out is not None and self._output_facts is None:
            self._output_facts = output_finish(out[0].tolist(), out[1])
        if target is not None:
            self._targets.append(target_finish(target[0].tolist(), target[1], target[2]))
        if loss is not None:
            self._loss_kind = loss
            self._loss_facts = {k.removeprefix("loss_"): v for k, v in loss.as_facts().items()}
        task = self.task_facts()
        if task == self._sent:
            return None
        self._sent = task
        return task

    def task_facts(self) -> dict[str, Any]:
        """Everything known so far (``{}`` when nothing was seen)."""
        task: dict[str, Any] = {}
        if self._loss_facts is not None:
            task["loss"] = dict(self._loss_facts)
        if self._output_facts is not None:
            task["output"] = {
                "shape": self._output_facts["shape"],
                "row_sum_one": self._output_facts["row_sum_one"],
                "min": self._output_facts["min"],
                "max": self._output_facts["max"],
            }
        if self._targets:
            target = merge_targets(self._targets)
            task["target"] = target
            kind = (self._loss_facts or {}).get("kind", "unknown")
            task["baseline_loss"] = baseline_loss(kind, target) if kind != "unknown" else None
            out_shape = (self._output_facts or {}).get("shape")
            if out_shape is not None and self._loss_kind is not None:
                # the loss graph shows that it averaged more elements than the model predicted
                task["broadcast_confirmed"] = broadcast_confirmed(self._loss_kind, out_shape)
            if out_shape is not None:
                mismatch = shape_mismatch(out_shape, target["shape"], kind)
                task["shape_mismatch"] = (
                    None
                    if mismatch is None
                    else {
                        "kind": mismatch.kind,
                        "output": list(mismatch.output_shape),
                        "target": list(mismatch.target_shape),
                    }
                )
        return task


def merge_targets(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One target summary from several batches' (:func:`~nndiag.collect.task.target_finish` dicts).

    Ranges widen, means and spreads average, flags hold only if they hold in every batch, class
    counts add up; the shape, dtype and what the targets look like are the first batch's (where
    the batches disagree on the look, ``looks_like`` is the first batch's and ``looks_vary`` is set).

    Example:
        >>> a = {"min": 0.0, "max": 1.0, "mean": 0.5, "std": 0.5, "in_01": True, "class_counts": [2, 2],
        ...      "num_classes": 2, "looks_like": "binary", "shape": [4]}
        >>> b = {**a, "max": 3.0, "in_01": False, "class_counts": [1, 2, 1], "num_classes": 3}
        >>> m = merge_targets([a, b])
        >>> m["max"], m["in_01"], m["class_counts"], m["num_classes"], m["looks_vary"]
        (3.0, False, [3, 4, 1], 3, False)
    """
    first = samples[0]
    out = dict(first)
    n = len(samples)
    for key in ("min",):
        out[key] = min(float(s.get(key, float("nan"))) for s in samples)
    for key in ("max",):
        out[key] = max(float(s.get(key, float("nan"))) for s in samples)
    for key in ("mean", "std", "feature_var", "feature_mad", "feature_std"):
        if all(key in s for s in samples):
            out[key] = sum(float(s[key]) for s in samples) / n
    for key in ("integer_valued", "in_01", "binary", "row_sum_one"):
        if all(key in s for s in samples):
            out[key] = all(bool(s[key]) for s in samples)
    for key in ("negatives", "ignored", "nonfinite", "numel", "rows"):
        if all(key in s for s in samples):
            out[key] = sum(int(s[key]) for s in samples)
    counts = [s.get("class_counts") for s in samples]
    if all(c is not None for c in counts):
        width = max(len(c) for c in counts if c is not None)
        out["class_counts"] = [sum(c[i] if i < len(c) else 0 for c in counts if c is not None) for i in range(width)]
        classes = [s.get("num_classes") for s in samples]
        out["num_classes"] = max(c for c in classes if c is not None) if any(c is not None for c in classes) else None
    out["looks_vary"] = len({s.get("looks_like") for s in samples}) > 1
    out["batches"] = n
    return out


def batch_target(batch: Any) -> torch.Tensor | None:
    """The targets in a training batch: the second element of a tuple/list, or a target key of a dict.

    Example:
        >>> import torch
        >>> batch_target((torch.zeros(4, 3), torch.ones(4))).shape, batch_target({"labels": torch.ones(2)}).shape
        (torch.Size([4]), torch.Size([2]))
        >>> batch_target(torch.zeros(4, 3)) is None, batch_target({"input_ids": torch.ones(2)}) is None
        (True, True)
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    if isinstance(batch, Mapping):
        for key in TARGET_KEYS:
            value = batch.get(key)
            if isinstance(value, torch.Tensor):
                return value
    return None
