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

Words: a network *stage* is a block of the model (``Outputs.stages``, ``Needs.stages``,
FitNets' ``hint_layer``); a training *phase* is a period of training with its own epochs,
lr, trainable modules and loss (AB's initialisation, FT's paraphraser, the main phase).

What a method reads from the models is ``Method.needs(cfg)``. A method whose needs do not
depend on its options declares them as a class attribute (``needs = Needs(...)``, turned
into that classmethod); one whose needs follow its Config overrides the classmethod
(FitNets taps the stage its ``hint_layer`` names).

Optional hooks, all with safe defaults:

* :meth:`check_pair` — decline a teacher/student pair the method cannot serve (the run is
  recorded as *skipped* with the reason); it runs after the generic checks of
  :meth:`check` (a teacher exists, the taps ``needs`` asks for exist) have passed.
* :meth:`phases` — extra training phases run before the main one (FitNets' hint phase,
  AB's initialisation, FT's paraphraser), each with its own epochs, lr, trainable modules
  and loss; checkpointed and resumed like the main phase.
* :meth:`main_modules` — which method submodules train in the main phase (modules
  trained only in an earlier phase are frozen explicitly by returning the rest).
* :meth:`wrap_train_dataset` — add data-side needs (CRD's sample indices and negatives,
  CCD's second augmented view).
* :meth:`make_student` — bring an own student type (CNN2GNN's GNN).
* :meth:`predict` — inference that is not a plain forward (CNN2GNN's inductive modes).

Options are turned into a Config by :func:`kdbench.config.resolve_config`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
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

    ``stages`` lists the network-stage indices it uses; ``"all"`` means every stage,
    student stage i paired with teacher stage i (so pairs with different stage counts are
    declined by the default :meth:`Method.check`); ``preact`` asks for pre-activation maps
    (AB); ``teacher=False`` means no teacher is loaded at all (vanilla). ``spatial`` is
    implied by non-empty ``stages``.
    """

    teacher: bool = True
    logits: bool = True
    embedding: bool = False
    stages: tuple[int, ...] | str = ()
    preact: bool = False

    @property
    def spatial(self) -> bool:
        return self.stages == "all" or bool(self.stages)


def _declared_needs(needs: Needs) -> classmethod:
    """The ``needs(cfg)`` classmethod of a method that declared ``needs = Needs(...)``."""

    def needs_of(cls: type, cfg: "MethodConfig | None" = None) -> Needs:
        return needs

    needs_of.__doc__ = f"{needs!r} whatever the Config (declared as a class attribute)."
    return classmethod(needs_of)


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the run when it is built."""

    num_classes: int
    num_train_samples: int
    device: torch.device
    epochs: int  # main-phase epochs of the recipe
    steps_per_epoch: int
    teacher_arch: str | None
    student_arch: str
    dataset: str
    input_size: tuple[int, int, int]
    train_labels: Tensor | None = None  # CPU int64, for class-aware sampling (CRD)


@dataclass(frozen=True)
class StepInfo:
    """Where training is: ``epoch`` counts from 1 within the current phase."""

    phase: str
    epoch: int
    epochs: int
    step: int  # global step within the phase, from 0
    steps_per_epoch: int

    @property
    def progress(self) -> float:
        """Fraction of the phase done, in [0, 1)."""
        return ((self.epoch - 1) * self.steps_per_epoch + self.step % max(1, self.steps_per_epoch)) / max(
            1, self.epochs * self.steps_per_epoch
        )


LossFn = Callable[[Outputs | None, Outputs | None, Batch, StepInfo], dict[str, Tensor]]


@dataclass
class Phase:
    """A training phase; methods declare extra phases that run before the main one.

    ``modules`` are the method submodules trained in this phase; ``student`` says which
    student parameters train: ``"all"``, ``"features"`` (everything but the classifier,
    AB's initialisation) or ``"none"`` (FT's paraphraser; the student is then not even
    run: ``loss`` receives ``s=None``). ``lr`` defaults to the recipe's. ``ce_weight`` adds
    the student's CE to the phase loss (0 by default). Extra phases are not evaluated on
    the test set; the lr stays constant within them.
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
            raise ValueError(f"Phase.student must be 'all', 'features' or 'none', got {self.student!r}")
        if self.epochs < 0:
            raise ValueError(f"phase {self.name!r}: epochs must be >= 0")


class Method(nn.Module):
    """Base class of all distillation methods. See the module docstring."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("needs")
        if isinstance(declared, Needs):
            cls.needs = _declared_needs(declared)  # type: ignore[assignment]

    def __init__(self, cfg: MethodConfig, teacher_info: TapInfo | None, student_info: TapInfo, ctx: MethodContext):
        super().__init__()
        self.cfg = cfg
        self.teacher_info = teacher_info
        self.student_info = student_info
        self.ctx = ctx

    @classmethod
    def needs(cls, cfg: MethodConfig | None = None) -> Needs:
        """What the method reads from the models under ``cfg`` (default: logits and a
        teacher). Declare ``needs = Needs(...)`` or override this classmethod."""
        return Needs()

    # -- pair compatibility -------------------------------------------------------------
    @classmethod
    def check(cls, cfg: MethodConfig, teacher_info: TapInfo | None, student_info: TapInfo) -> str | None:
        """Why this pair cannot be served, or ``None``: the generic checks of ``needs``
        (a teacher exists, the stages and pre-activations it asks for exist, stage counts
        agree for ``stages="all"``), then the method's own :meth:`check_pair`."""
        needs = cls.needs(cfg)
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
                    return (f"{cls.name} uses stage index {bad} (0-based, -1 = the last) but the {role} "
                            f"has {n} stage(s)")
        if needs.stages == "all" and teacher_info is not None and teacher_info.num_stages != student_info.num_stages:
            return (f"{cls.name} pairs student stage i with teacher stage i; their stage counts differ "
                    f"(student {student_info.num_stages}, teacher {teacher_info.num_stages})")
        return cls.check_pair(cfg, teacher_info, student_info)

    @classmethod
    def check_pair(cls, cfg: MethodConfig, teacher_info: TapInfo | None, student_info: TapInfo) -> str | None:
        """The method's own reasons to decline a pair (default: none). Runs only after the
        generic checks passed, so ``teacher_info`` is set whenever ``needs`` asks for a
        teacher and every stage it names exists in both models."""
        return None

    # -- the loss -----------------------------------------------------------------------
    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        """Named, already-weighted loss terms for the main phase (CE is added by the trainer)."""
        return {}

    # -- optional hooks -----------------------------------------------------------------
    def phases(self) -> list[Phase]:
        """Extra training phases run before the main phase, in order."""
        return []

    def main_modules(self) -> list[nn.Module]:
        """Modules trained in the main phase (default: the whole method, i.e. every
        parameter it owns). Return a subset to freeze the rest (e.g. FT's paraphraser)."""
        return [self]

    @property
    def taps(self) -> Needs:
        """``needs`` under this method's own Config."""
        return type(self).needs(self.cfg)

    #: The method's training batches are not the standard ones (their ``x`` is not the
    #: standard batch), but :meth:`teacher_forward` can reuse the teacher's outputs on the
    #: standard rows, which a fused column computes once (CCD: its original-view rows).
    teacher_on_standard_rows: bool = False

    def teacher_forward(self, teacher: nn.Module, batch: Batch, preact: bool,
                        standard: Outputs | None = None) -> Outputs:
        """The frozen teacher's outputs on a training batch (called under ``no_grad``;
        default: ``teacher.forward_taps(batch.x)``). ``standard``: the teacher's outputs on
        the standard rows of the batch, already computed, for a method that declares
        :attr:`teacher_on_standard_rows` (``None`` otherwise); using them must give exactly
        what computing them would."""
        return teacher.forward_taps(batch.x, preact=preact)

    def student_forward(self, student: nn.Module, batch: Batch, teacher_out: Outputs | None,
                        preact: bool) -> Outputs:
        """The student's outputs for a training batch (default: ``student.forward_taps``).
        A method whose student needs more than the images (CNN2GNN's GNN: the batch graph
        from the sample indices, or the teacher's embeddings as input) overrides this."""
        return student.forward_taps(batch.x, preact=preact)

    def eval_batch_size(self) -> int | None:
        """The test batch size when it changes predictions (CNN2GNN's Mechanism 2 builds a
        graph over each test batch): part of the Config, hence of the run key. ``None``
        (the default): predictions do not depend on it; the environment's is used."""
        return None

    def main_lr(self, recipe_lr: float) -> float:
        """The main phase's base lr (before the recipe's decay); default the recipe's. A
        method whose student is not the CNN the recipe was tuned for (CNN2GNN's GNN) may
        scale it through a Config option (and say so in its docstring)."""
        return recipe_lr

    def uses_teacher_in_main(self) -> bool:
        """Whether the main phase runs the teacher (default: ``needs(cfg).teacher``). A
        method whose main phase is CE only (AB) returns False and saves the teacher's forward."""
        return self.taps.teacher

    def run_info(self) -> dict[str, Any]:
        """Values the method worked out at build time (e.g. DKD's β preset, CRD's
        effective K), recorded in the result row as ``method_info``."""
        return {}

    def wrap_train_dataset(self, data: TrainData) -> TrainData:
        """Return a wrapper adding what the method needs per batch (default: unchanged)."""
        return data

    @classmethod
    def student_name(cls, cfg: MethodConfig) -> str | None:
        """The name of the method's own student type (e.g. ``"gnn"``), or ``None`` when the
        method trains the pair's student. A method with its own student must implement
        :meth:`make_student`; its runs carry this name as their student, so one run
        serves every column with the same teacher (or every column, without a teacher),
        and reports place it in those columns saying that the CNN student is not used."""
        return None

    @classmethod
    def make_student(cls, cfg: MethodConfig, ctx: MethodContext, teacher_info: TapInfo | None) -> nn.Module | None:
        """A student of the method's own type (see :meth:`student_name`), or ``None``.
        ``teacher_info`` (measured on an untrained copy) sizes inputs taken from the teacher."""
        return None

    def predict(self, student: nn.Module, teacher: nn.Module | None, batch: Batch) -> Tensor:
        """Logits used for evaluation (default: the student's plain forward)."""
        return student(batch.x)

    @property
    def uses_teacher_at_inference(self) -> bool:
        """Whether inference runs the teacher (e.g. a student fed the teacher's features)."""
        return False

    def inference_cost(self, student: nn.Module, teacher: nn.Module | None) -> dict[str, int]:
        """What inference consults beyond the images, for the result row:
        ``inference_params`` (the student's, plus the teacher's when inference runs it) and
        ``inference_stored_values`` (numbers kept from training, e.g. a stored training set;
        0 for a plain forward). Override when :meth:`predict` consults more."""
        params = sum(p.numel() for p in student.parameters())
        if self.uses_teacher_at_inference and teacher is not None:
            params += sum(p.numel() for p in teacher.parameters())
        return {"inference_params": params, "inference_stored_values": 0}

    # -- helpers for subclasses -----------------------------------------------------------
    @classmethod
    def default_config(cls) -> MethodConfig:
        return cls.Config()

    def extra_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def scaled_epochs(explicit: int | None, reference: int, main_epochs: int, reference_main: int = 240) -> int:
    """Epochs of an auxiliary phase or warm-up: ``explicit`` if set, else ``reference``
    epochs per ``reference_main`` main epochs (the reference schedule) scaled to this run's
    main epochs, at least 1. E.g. AB's 30 initialisation epochs of a 240-epoch schedule
    become 2 for a 15-epoch run."""
    if explicit is not None:
        return explicit
    return max(1, round(reference * main_epochs / reference_main))
