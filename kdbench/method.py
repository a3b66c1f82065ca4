"""The Method interface every distillation method implements (DESIGN §3).

A method is an ``nn.Module`` in one file, registered by name::

    @register_method("kd")
    class KD(Method):
        \"\"\"Hinton et al. 2015 ...\"\"\"
        version = 1

        @dataclass(frozen=True)
        class Config(MethodConfig):
            ce_weight: float = 0.1
            kd_weight: float = 0.9
            temperature: float = 4.0

        needs = Needs(logits=True)

        def loss(self, s, t, batch, step):
            return {"loss_kd": self.cfg.kd_weight * kl_div_t(s.logits, t.logits, self.cfg.temperature)}

The trainer computes ``ce_weight * CE(student logits, y)``, adds the named, already
weighted terms returned by :meth:`Method.loss`, backpropagates their sum and logs every
term. Extra trainable modules (regressors, embeddings, ...) are submodules of the method,
so they reach the optimizer, the checkpoint and the parameter count by construction.

Optional hooks, all with safe defaults:

* :meth:`check` — decline a teacher/student pair the method cannot serve (the run is
  recorded as *skipped* with the reason).
* :meth:`stages` — extra stages run before the main one (FitNets' hint stage, AB's
  initialisation, FT's paraphraser), each with its own epochs, lr, trainable modules and
  loss; checkpointed and resumed like the main stage.
* :meth:`main_modules` — which method submodules train in the main stage (modules
  trained only in an earlier stage are frozen explicitly by returning the rest).
* :meth:`wrap_train_dataset` — add data-side needs (CRD's sample indices and negatives,
  CCD's second augmented view).
* :meth:`make_student` — bring an own student type (CNN2GNN's GNN).
* :meth:`predict` — inference that is not a plain forward (CNN2GNN's inductive modes).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import yaml
from torch import Tensor, nn

from kdbench.data import Batch, TrainData
from kdbench.taps import Outputs, TapInfo


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's ``Config``: the weight of the cross-entropy term."""

    ce_weight: float = 1.0


@dataclass(frozen=True)
class Needs:
    """What a method reads from the two models.

    ``stages`` lists the stage indices it uses; ``"all"`` means every stage, student stage
    i paired with teacher stage i (so pairs with different stage counts are declined by the
    default :meth:`Method.check`); ``preact`` asks
    for pre-activation maps (AB); ``teacher=False`` means no teacher is loaded at all
    (vanilla). ``spatial`` is implied by non-empty ``stages``.
    """

    teacher: bool = True
    logits: bool = True
    embedding: bool = False
    stages: tuple[int, ...] | str = ()
    preact: bool = False

    @property
    def spatial(self) -> bool:
        return self.stages == "all" or bool(self.stages)


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the run when it is built."""

    num_classes: int
    num_train_samples: int
    device: torch.device
    epochs: int  # main-stage epochs of the recipe
    steps_per_epoch: int
    teacher_arch: str | None
    student_arch: str
    dataset: str
    input_size: tuple[int, int, int]
    train_labels: Tensor | None = None  # CPU int64, for class-aware sampling (CRD)


@dataclass(frozen=True)
class StepInfo:
    """Where training is: ``epoch`` counts from 1 within the current stage."""

    stage: str
    epoch: int
    epochs: int
    step: int  # global step within the stage, from 0
    steps_per_epoch: int

    @property
    def progress(self) -> float:
        """Fraction of the stage done, in [0, 1)."""
        return ((self.epoch - 1) * self.steps_per_epoch + self.step % max(1, self.steps_per_epoch)) / max(
            1, self.epochs * self.steps_per_epoch
        )


LossFn = Callable[[Outputs | None, Outputs | None, Batch, StepInfo], dict[str, Tensor]]


@dataclass
class Stage:
    """An extra training stage before the main one.

    ``modules`` are the method submodules trained in this stage; ``student`` says which
    student parameters train: ``"all"``, ``"features"`` (everything but the classifier,
    AB's initialisation) or ``"none"`` (FT's paraphraser; the student is then not even
    run: ``loss`` receives ``s=None``). ``lr`` defaults to the recipe's. ``ce_weight`` adds
    the student's CE to the stage loss (0 by default). Stages are not evaluated on the
    test set; the lr stays constant within a stage.
    """

    name: str
    epochs: int
    loss: LossFn
    modules: tuple[nn.Module, ...] = ()
    student: str = "all"
    lr: float | None = None
    ce_weight: float = 0.0
    needs_teacher: bool = True

    def __post_init__(self) -> None:
        if self.student not in ("all", "features", "none"):
            raise ValueError(f"Stage.student must be 'all', 'features' or 'none', got {self.student!r}")
        if self.epochs < 0:
            raise ValueError(f"stage {self.name!r}: epochs must be >= 0")


class Method(nn.Module):
    """Base class of all distillation methods. See the module docstring."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs: ClassVar[Needs] = Needs()

    def __init__(self, cfg: MethodConfig, teacher_info: TapInfo | None, student_info: TapInfo, ctx: MethodContext):
        super().__init__()
        self.cfg = cfg
        self.teacher_info = teacher_info
        self.student_info = student_info
        self.ctx = ctx

    # -- pair compatibility -------------------------------------------------------------
    @classmethod
    def check(cls, cfg: MethodConfig, teacher_info: TapInfo | None, student_info: TapInfo) -> str | None:
        """Return why this pair cannot be served, or ``None``. The default checks ``needs``."""
        needs = cls.needs
        for role, info in (("teacher", teacher_info), ("student", student_info)):
            if info is None:
                if role == "teacher" and needs.teacher:
                    return f"{cls.name} needs a teacher"
                continue
            if needs.spatial and info.kind != "cnn":
                return f"{cls.name} distils spatial feature maps; the {role} ({info.kind}) has none"
            if needs.preact and not info.has_preact:
                return f"{cls.name} needs pre-activation feature maps; the {role} does not provide them"
            if isinstance(needs.stages, tuple) and needs.stages:
                n = info.num_stages
                bad = [i for i in needs.stages if not -n <= i < n]
                if bad:
                    return f"{cls.name} uses stage(s) {bad}; the {role} has {n} stage(s)"
        if needs.stages == "all" and teacher_info is not None and teacher_info.num_stages != student_info.num_stages:
            return (f"{cls.name} pairs student stage i with teacher stage i; their stage counts differ "
                    f"(student {student_info.num_stages}, teacher {teacher_info.num_stages})")
        return None

    # -- the loss -----------------------------------------------------------------------
    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        """Named, already-weighted loss terms for the main stage (CE is added by the trainer)."""
        return {}

    # -- optional hooks -----------------------------------------------------------------
    def stages(self) -> list[Stage]:
        """Extra stages run before the main stage, in order."""
        return []

    def main_modules(self) -> list[nn.Module]:
        """Modules trained in the main stage (default: the whole method, i.e. every
        parameter it owns). Return a subset to freeze the rest (e.g. FT's paraphraser)."""
        return [self]

    def uses_teacher_in_main(self) -> bool:
        """Whether the main stage runs the teacher (default: ``needs.teacher``). A method
        whose main stage is CE only (AB) returns False and saves the teacher's forward."""
        return self.needs.teacher

    def run_info(self) -> dict[str, Any]:
        """Values the method worked out at build time (e.g. DKD's β preset, CRD's
        effective K), recorded in the result row as ``method_info``."""
        return {}

    def wrap_train_dataset(self, data: TrainData) -> TrainData:
        """Return a wrapper adding what the method needs per batch (default: unchanged)."""
        return data

    @classmethod
    def make_student(cls, cfg: MethodConfig, ctx: MethodContext) -> nn.Module | None:
        """A student of the method's own type replacing the pair's student, or ``None``."""
        return None

    def predict(self, student: nn.Module, teacher: nn.Module | None, batch: Batch) -> Tensor:
        """Logits used for evaluation (default: the student's plain forward)."""
        return student(batch.x)

    @property
    def uses_teacher_at_inference(self) -> bool:
        return False

    # -- helpers for subclasses -----------------------------------------------------------
    @classmethod
    def default_config(cls) -> MethodConfig:
        return cls.Config()

    def extra_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# -- config resolution -------------------------------------------------------------------

def resolve_config(method_cls: type[Method], overrides: dict[str, Any] | None = None) -> MethodConfig:
    """Build ``method_cls.Config`` from its defaults and ``overrides``.

    Unknown keys are an error naming the valid fields; values given as strings (from the
    command line) are parsed as YAML scalars and checked against the field's type.
    """
    cfg_cls = method_cls.Config
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {method_cls.name} option(s) {unknown}; valid options: "
            + ", ".join(f"{n}={getattr(cfg_cls(), n)!r}" for n in fields)
        )
    hints = typing.get_type_hints(cfg_cls)
    values = {name: coerce(method_cls.name, name, value, hints.get(name)) for name, value in overrides.items()}
    return cfg_cls(**values)


def coerce(owner: str, name: str, value: Any, hint: Any) -> Any:
    """Parse ``value`` (possibly a CLI string) into the type ``hint`` or raise a clear error."""
    if isinstance(value, str) and hint is not str:
        value = yaml.safe_load(value) if value.strip() else value
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is None or hint is Any:
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{owner}.{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(owner, name, value, a)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{owner}.{name}: {value!r} fits none of {args}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        return tuple(coerce(owner, name, v, inner) for v in value) if origin is tuple else [coerce(owner, name, v, inner) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{owner}.{name} must be true/false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{owner}.{name} must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{owner}.{name} must be an integer, got {value!r}")
        return value
    if hint is str:
        return str(value)
    return value


def config_dict(cfg: MethodConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def scaled_epochs(explicit: int | None, reference: int, main_epochs: int, reference_main: int = 240) -> int:
    """Epochs of an auxiliary stage or warm-up: ``explicit`` if set, else ``reference``
    epochs per ``reference_main`` main epochs (the reference schedule) scaled to this run's
    main epochs, at least 1. E.g. AB's 30 initialisation epochs of a 240-epoch schedule
    become 2 for a 15-epoch run."""
    if explicit is not None:
        return explicit
    return max(1, round(reference * main_epochs / reference_main))
