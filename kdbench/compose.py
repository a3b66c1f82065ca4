"""Method composition: ``X+kd`` is any method ``X`` with Hinton's KD added to its loss.

The HKD paper's tables (and RepDistiller's ``-a 1``) combine every method with KD:
``loss = ce_weight·CE + (X's own terms) + kd_weight·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))``
with ``kd_weight = 1`` and ``T = 4``, X's CE weight unchanged. Here that is a composition in
the core, not an option of each method: ``--methods at+kd,hkd+kd`` (or ``methods: [at+kd]`` in
a grid file) names a method class built on demand from ``X``'s class by :func:`plus_kd`:

* a subclass of ``X`` (every hook, phase and data wrapper of X is kept) named ``X+kd``, whose
  ``Config`` is X's plus ``kd_weight`` (1.0) and ``kd_temperature`` (4.0), overridable as
  ``--set at+kd.kd_weight=0.5``; its loss is X's main-phase terms plus ``loss_kd``; it always
  reads the teacher's logits in the main phase (AB's main phase otherwise skips the teacher);
* its run key differs from X's (another method name, the KD options in its config) and its
  ``version`` is X's, so a change of X is a change of ``X+kd``;
* the registry resolves ``<name>+kd`` through :meth:`kdbench.registry.Registry.register_suffix`;
  ``METHODS.list()`` (hence ``--methods all``) lists only the registered methods, and
  ``METHODS.composed()`` the compositions (shown by ``kdbench list methods``).

Methods that already carry KD are not composed twice:

* a Config with a ``kd_weight`` option whose default is 0 (CRD's ``-a``): ``X+kd`` is X with
  ``kd_weight = 1`` (its own ``temperature``, 4) — the same loss as ``--set crd.kd_weight=1``,
  RepDistiller's CRD+KD, under the row name ``crd+kd``;
* a ``kd_weight`` default above 0 (``kd``, ``ccd``, ``cnn2gnn``, and any ``X+kd``, so
  ``at+kd+kd``) is an error: the method already weights KD;
* a method without a teacher (``vanilla``, ``gnn``) is an error: KD needs one.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

from torch import Tensor

from kdbench.method import Method, MethodConfig, Needs
from kdbench.methods._common import kl_div_t

#: the composition's name suffix
SUFFIX = "+kd"
#: RepDistiller's ``-a 1`` and ``--kd_T 4`` (the HKD paper's "combined with KD")
KD_WEIGHT = 1.0
KD_TEMPERATURE = 4.0


class CompositionError(ValueError):
    """``X+kd`` cannot be built; the message says why and what to use instead."""


def plus_kd(base_name: str) -> type[Method]:
    """The class of ``<base_name>+kd`` (one class per base class, built once)."""
    from kdbench.registry import METHODS, UnknownNameError

    try:
        base = METHODS.get(base_name)
    except UnknownNameError as exc:
        raise CompositionError(f"{base_name}{SUFFIX}: {exc}") from None
    return _plus_kd_class(base)


def composition_problem(base: type[Method]) -> str | None:
    """Why ``base`` cannot be combined with KD, or ``None``."""
    name = f"{base.name}{SUFFIX}"
    try:
        needs = base.needs(base.Config())
    except TypeError as exc:  # a plugin whose Config has options without defaults
        return f"{name}: {base.name}'s Config cannot be built with its defaults ({exc})"
    if not needs.teacher:
        return f"{name}: {base.name} trains without a teacher; KD needs one (use kd)"
    default = {f.name: f.default for f in dataclasses.fields(base.Config)}.get("kd_weight")
    if isinstance(default, (int, float)) and default > 0:
        return (f"{name}: {base.name} already weights KD (kd_weight = {default}); set its own option instead, "
                f"e.g. --set {base.name}.kd_weight=...")
    return None


@functools.lru_cache(maxsize=None)
def _plus_kd_class(base: type[Method]) -> type[Method]:
    problem = composition_problem(base)
    if problem:
        raise CompositionError(problem)
    own_kd = "kd_weight" in {f.name for f in dataclasses.fields(base.Config)}
    config = _config_class(base, own_kd)
    name = f"{base.name}{SUFFIX}"

    class PlusKD(base):  # type: ignore[valid-type, misc]
        __doc__ = (f"{base.name} combined with KD: its own kd_weight set to {KD_WEIGHT:g} (RepDistiller's -a 1)."
                   if own_kd else f"{base.name} combined with KD: its own loss + kd_weight·T²·KL_T "
                   f"(RepDistiller's -a {KD_WEIGHT:g}, T = {KD_TEMPERATURE:g}).")

        @classmethod
        def needs(cls, cfg: MethodConfig | None = None) -> Needs:
            return dataclasses.replace(base.needs(cfg), teacher=True, logits=True)

        def uses_teacher_in_main(self) -> bool:
            return True

        def loss(self, s: Any, t: Any, batch: Any, step: Any) -> dict[str, Tensor]:
            terms = super().loss(s, t, batch, step)
            if own_kd:
                return terms
            if "loss_kd" in terms:
                raise RuntimeError(f"{name}: {base.name} returned its own 'loss_kd' term")
            return {**terms, "loss_kd": self.cfg.kd_weight * kl_div_t(s.logits, t.logits, self.cfg.kd_temperature)}

    PlusKD.name = name
    PlusKD.version = base.version
    PlusKD.Config = config
    PlusKD.__name__ = PlusKD.__qualname__ = f"{base.__name__}PlusKD"
    PlusKD.__module__ = __name__
    return PlusKD


def _config_class(base: type[Method], own_kd: bool) -> type[MethodConfig]:
    """X's Config with KD's options: ``kd_weight`` set to 1 when X has its own (CRD), else
    ``kd_weight`` and ``kd_temperature`` added (checked: ``kd_weight >= 0``, ``T > 0``)."""
    if own_kd:
        fields = [("kd_weight", float, dataclasses.field(default=KD_WEIGHT))]
    else:
        fields = [("kd_weight", float, dataclasses.field(default=KD_WEIGHT)),
                  ("kd_temperature", float, dataclasses.field(default=KD_TEMPERATURE))]
    base_post_init = getattr(base.Config, "__post_init__", None)

    def __post_init__(self: Any) -> None:
        if base_post_init is not None:
            base_post_init(self)
        if not self.kd_weight >= 0:
            raise ValueError(f"kd_weight must be >= 0, got {self.kd_weight}")
        if not own_kd and not self.kd_temperature > 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}")

    cls = dataclasses.make_dataclass("Config", fields, bases=(base.Config,), frozen=True,
                                     namespace={"__post_init__": __post_init__})
    cls.__qualname__ = f"{base.__name__}PlusKD.Config"
    cls.__module__ = __name__
    return cls
