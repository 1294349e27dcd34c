"""Typed model facts: what a run's model is (layers, parameters, optimizers, batch size).

:class:`ModelFacts` holds per-layer :class:`LayerFacts`, per-parameter :class:`ParamFacts` and the
initial weights' :class:`InitFacts`. They are built by :mod:`nndiag.collect.facts` at the first
logging step and stored in the run store's ``meta['facts']`` as the JSON of :meth:`ModelFacts.to_dict`
(the same JSON as before these classes existed: stores written before load unchanged).
:meth:`ModelFacts.from_dict` accepts partial dicts (rule tests pass a few keys) and keeps unknown
keys in ``extra`` (written back by ``to_dict``).

``None`` means "unknown" everywhere. Each class also answers ``get(key, default)`` (``default`` when
the fact is unknown) and ``[key]`` like the dicts it replaces, for code not yet converted to
attributes.

This module imports nothing from nndiag (no torch either): every layer may use it.

Example:
    >>> from nndiag.facts import ModelFacts
    >>> f = ModelFacts.from_dict({"forward_order": ["fc"], "layers": {"fc": {"kind": "linear", "fan_in": 4}},
    ...                           "batch_size": 8, "custom": 1})
    >>> f.layers["fc"].fan_in, f.batch_size, f.extra, f.layer("nope").kind
    (4, 8, {'custom': 1}, None)
    >>> f.layers["fc"].get("module_type", "?")
    '?'
    >>> ModelFacts.from_dict(f.to_dict()) == f
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

_T = TypeVar("_T", bound="_Record")


class _Record:
    """Shared ``from_dict``/``to_dict`` of the fact records: declared fields, unknown keys in ``extra``."""

    _FIELDS: ClassVar[tuple[str, ...]] = ()
    extra: dict[str, Any]

    @classmethod
    def from_dict(cls: type[_T], data: dict[str, Any] | None) -> _T:
        """A record from its stored dict (missing keys unknown, unknown keys kept in ``extra``)."""
        data = dict(data or {})
        known = {k: data.pop(k) for k in cls._FIELDS if k in data}
        return cls(**known, extra=data)  # type: ignore[call-arg]  # the dataclass subclasses take these

    def to_dict(self) -> dict[str, Any]:
        """The stored dict: every declared field (``None`` when unknown), then the unknown keys."""
        out = {k: getattr(self, k) for k in self._FIELDS}
        out.update(self.extra)
        return out

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style read: the fact ``key``, or ``default`` when it is unknown."""
        value = getattr(self, key) if key in self._FIELDS else self.extra.get(key)
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        if key in self._FIELDS:
            return getattr(self, key)  # as in the stored dict, where every declared key is present
        return self.extra[key]

    def __bool__(self) -> bool:
        """Whether anything is known (an unknown layer or parameter is falsy, like the empty dict it replaces)."""
        return bool(self.extra) or any(getattr(self, k) is not None for k in self._FIELDS)


@dataclass(frozen=True, eq=True)
class LayerFacts(_Record):
    """One recorded module.

    Attributes:
        module_type: class name (``Linear``, ``ReLU``, ...).
        kind: linear, conv, norm, activation, recurrent, attention, embedding, dropout, pooling, other.
        activation: an activation module's family; for linear/conv layers the activation after them.
        fan_in: input width as used by Xavier/He initialisation (weight layers).
        fan_out: output width.
        is_batchnorm: a BatchNorm layer.
        n_params: parameters of the module itself (not its children).
        forward_order: index in the forward pass (``None``: not called in the first logging step).
        out_shape: shape of its (first) output in the first logging step.
    """

    _FIELDS: ClassVar[tuple[str, ...]] = (
        "module_type",
        "kind",
        "activation",
        "fan_in",
        "fan_out",
        "is_batchnorm",
        "n_params",
        "forward_order",
        "out_shape",
    )
    module_type: str | None = None
    kind: str | None = None
    activation: str | None = None
    fan_in: int | None = None
    fan_out: int | None = None
    is_batchnorm: bool | None = None
    n_params: int | None = None
    forward_order: int | None = None
    out_shape: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=True)
class ParamFacts(_Record):
    """One parameter: ``shape``, ``numel``, ``trainable``, ``in_optimizer``, owning ``layer``."""

    _FIELDS: ClassVar[tuple[str, ...]] = ("shape", "numel", "trainable", "in_optimizer", "layer")
    shape: list[int] | None = None
    numel: int | None = None
    trainable: bool | None = None
    in_optimizer: bool | None = None
    layer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=True)
class InitFacts(_Record):
    """One parameter before training: ``mean``, ``std``, ``absmax``, ``units_identical`` (symmetric init)."""

    _FIELDS: ClassVar[tuple[str, ...]] = ("mean", "std", "absmax", "units_identical")
    mean: float | None = None
    std: float | None = None
    absmax: float | None = None
    units_identical: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# the stored keys, in stored order; num_classes is the user's (never stored, given to the advisors)
_MODEL_FIELDS = (
    "layers",
    "params",
    "forward_order",
    "has_batchnorm",
    "batch_size",
    "n_params",
    "n_trainable",
    "optimizers",
    "model_class",
    "init",
    "resumed_at",
)


@dataclass(frozen=True, eq=True)
class ModelFacts:
    """Facts about one run's model (see docs/metrics.md, "Model facts").

    Attributes:
        layers: recorded modules by name.
        params: parameters by (cleaned) name.
        forward_order: recorded modules in the order the forward pass called them.
        has_batchnorm: any BatchNorm layer.
        batch_size: per-device batch size of the first logging step.
        n_params: all parameters (elements).
        n_trainable: trainable parameter elements.
        optimizers: per optimizer ``{"class": ..., "param_groups": [hyperparameters..., n_params]}``.
        model_class: the root module's class name.
        init: initial weight statistics per parameter (empty for a resumed run without them).
        resumed_at: the step a resumed run started at (``None``: started at 0).
        num_classes: classes of a softmax classifier set by the user (not stored with the facts).
        extra: facts of other keys (kept and written back as they are).
    """

    layers: dict[str, LayerFacts] = field(default_factory=dict)
    params: dict[str, ParamFacts] = field(default_factory=dict)
    forward_order: list[str] = field(default_factory=list)
    has_batchnorm: bool | None = None
    batch_size: int | None = None
    n_params: int | None = None
    n_trainable: int | None = None
    optimizers: list[dict[str, Any]] = field(default_factory=list)
    model_class: str | None = None
    init: dict[str, InitFacts] = field(default_factory=dict)
    resumed_at: int | None = None
    num_classes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | ModelFacts | None) -> ModelFacts:
        """Facts from their stored dict (or partial dict); a :class:`ModelFacts` is returned as it is."""
        if isinstance(data, ModelFacts):
            return data
        d = dict(data or {})
        return cls(
            layers={str(k): LayerFacts.from_dict(v) for k, v in (d.pop("layers", None) or {}).items()},
            params={str(k): ParamFacts.from_dict(v) for k, v in (d.pop("params", None) or {}).items()},
            forward_order=[str(n) for n in d.pop("forward_order", None) or []],
            has_batchnorm=d.pop("has_batchnorm", None),
            batch_size=d.pop("batch_size", None),
            n_params=d.pop("n_params", None),
            n_trainable=d.pop("n_trainable", None),
            optimizers=list(d.pop("optimizers", None) or []),
            model_class=d.pop("model_class", None),
            init={str(k): InitFacts.from_dict(v) for k, v in (d.pop("init", None) or {}).items()},
            resumed_at=d.pop("resumed_at", None),
            num_classes=d.pop("num_classes", None),
            extra=d,
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON-ready dict (the keys and order of every nndiag version so far)."""
        out: dict[str, Any] = {
            "layers": {k: v.to_dict() for k, v in self.layers.items()},
            "params": {k: v.to_dict() for k, v in self.params.items()},
            "forward_order": list(self.forward_order),
            "has_batchnorm": self.has_batchnorm,
            "batch_size": self.batch_size,
            "n_params": self.n_params,
            "n_trainable": self.n_trainable,
            "optimizers": list(self.optimizers),
            "model_class": self.model_class,
            "init": {k: v.to_dict() for k, v in self.init.items()},
            "resumed_at": self.resumed_at,
        }
        if self.num_classes is not None:
            out["num_classes"] = self.num_classes
        out.update(self.extra)
        return out

    def layer(self, name: str) -> LayerFacts:
        """Facts of one module (all unknown when it was not recorded)."""
        return self.layers.get(name) or _NO_LAYER

    def param(self, name: str) -> ParamFacts:
        """Facts of one parameter (all unknown when it is not known)."""
        return self.params.get(name) or _NO_PARAM

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style read of a top-level fact (``default`` when unknown or empty)."""
        value = getattr(self, key) if key in _MODEL_FIELDS or key == "num_classes" else self.extra.get(key)
        return default if value is None or value == {} or value == [] else value


_NO_LAYER = LayerFacts()
_NO_PARAM = ParamFacts()

__all__ = ["InitFacts", "LayerFacts", "ModelFacts", "ParamFacts"]
