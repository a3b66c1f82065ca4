"""Training recipes, run specifications and their content keys.

A :class:`RunSpec` names one training run: dataset, teacher, student, method (+ config
overrides), recipe and seed. Its *key* is a short hash of the **resolved** spec — method
config with defaults filled in, method version, the teacher's own key (which covers the
teacher's recipe and seed, or the checksum of a user-supplied checkpoint) — in canonical
JSON. Fields that cannot change a result (device, worker count, log frequency,
channels-last) are not part of it, so the same run on another machine has the same key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

#: Bump when the engine changes in a way that changes results (part of every key).
ENGINE_VERSION = 1


class RecipeError(ValueError):
    """A recipe value of the wrong type or out of range; the message names the field and
    what is valid."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: Recipe field -> (test, what is valid). Values are never coerced: 1.7 epochs is an
#: error, not 1, and "fast" is not a learning rate.
RECIPE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "batch_size": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "lr": (lambda v: _is_finite(v) and v > 0, "a finite number > 0"),
    "lr_lightweight": (lambda v: _is_finite(v) and v > 0, "a finite number > 0"),
    "momentum": (lambda v: _is_finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: _is_finite(v) and v >= 0, "a finite number >= 0"),
    "lr_milestones": (lambda v: isinstance(v, tuple) and all(_is_finite(m) and 0 < m <= 1 for m in v),
                      "a list of fractions of the epochs, each in (0, 1]"),
    "lr_decay": (lambda v: _is_finite(v) and 0 < v <= 1, "a number in (0, 1]"),
    "amp": (lambda v: isinstance(v, bool), "true or false"),
    "channels_last": (lambda v: isinstance(v, bool), "true or false"),
}


def check_recipe_values(recipe: "Recipe") -> None:
    """Raise :class:`RecipeError` for the first field of ``recipe`` that
    :data:`RECIPE_CHECKS` rejects (``recipe.lr must be a finite number > 0, got -1.0``)."""
    for name, (ok, valid) in RECIPE_CHECKS.items():
        value = getattr(recipe, name)
        if not ok(value):
            raise RecipeError(f"recipe.{name} must be {valid}, got {value!r}{_text_hint(value)}")


def _text_hint(value: Any) -> str:
    """A hint for numbers that arrived as text (YAML 1.1 reads ``5e-4`` as a string)."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    return " (text, not a number: in YAML write 5.0e-4, not 5e-4)" if math.isfinite(number) else ""


@dataclass(frozen=True)
class Recipe:
    """How a network is trained (RepDistiller's CIFAR-100 recipe by default).

    ``lr_milestones`` are fractions of ``epochs`` so that a shortened run keeps the shape
    of the schedule: (0.625, 0.75, 0.875) × 240 = epochs 150/180/210.
    ``lr_lightweight`` replaces ``lr`` for MobileNetV2/ShuffleNet students (RepDistiller
    uses 0.01 for them). ``amp`` trains under bf16 autocast; ``channels_last`` stores
    images and activations in the channels-last memory format. Both change results (other
    kernels, other rounding: a 1-epoch digits KD run gave 98.61 % with channels-last and
    97.78 % without), so both are part of the key.
    """

    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    lr_lightweight: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple[float, ...] = (0.625, 0.75, 0.875)
    lr_decay: float = 0.1
    amp: bool = False
    channels_last: bool = False
    #: training augmentation + normalisation: "crop" (the dataset's padded random crop + flip)
    #: or "rotate" (random rotation ±20° + flip, mdistiller's Tiny-ImageNet pipeline); see kdbench.data
    augment: str = "crop"

    def __post_init__(self) -> None:
        check_recipe_values(self)
        if self.augment not in ("crop", "rotate"):
            raise ValueError(f"recipe augment must be 'crop' or 'rotate', got {self.augment!r}")

    @property
    def memory_format(self) -> "torch.memory_format":
        """The memory format images, students and teachers use under this recipe."""
        import torch

        return torch.channels_last if self.channels_last else torch.contiguous_format

    def lr_for(self, lightweight: bool) -> float:
        return self.lr_lightweight if lightweight else self.lr

    def milestone_epochs(self) -> list[int]:
        """Epoch numbers (1-based, as in RepDistiller) after which the lr decays."""
        return sorted({max(1, round(m * self.epochs)) for m in self.lr_milestones if round(m * self.epochs) < self.epochs + 1})

    def replace(self, **changes: Any) -> "Recipe":
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - fields
        if unknown:
            raise ValueError(f"unknown recipe field(s) {sorted(unknown)}; valid: {sorted(fields)}")
        if isinstance(changes.get("lr_milestones"), list):
            changes["lr_milestones"] = tuple(changes["lr_milestones"])
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid. ``teacher`` is ``None`` for runs without a teacher (vanilla)."""

    dataset: str
    student: str
    method: str
    seed: int
    recipe: Recipe
    teacher: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    teacher_seed: int = 0
    teacher_ckpt: str | None = None
    imports: tuple[str, ...] = ()
    teacher_epochs: int | None = None  # None: the teacher uses ``recipe.epochs`` too

    @property
    def pair(self) -> str:
        return f"{self.teacher}->{self.student}" if self.teacher else self.student

    def overrides_dict(self) -> dict[str, Any]:
        return dict(self.overrides)

    def teacher_spec(self) -> "RunSpec | None":
        """The vanilla run that trains this spec's teacher (None with a supplied checkpoint)."""
        if self.teacher is None or self.teacher_ckpt:
            return None
        recipe = self.recipe if self.teacher_epochs is None else self.recipe.replace(epochs=self.teacher_epochs)
        return RunSpec(dataset=self.dataset, student=self.teacher, method="vanilla",
                       seed=self.teacher_seed, recipe=recipe, imports=self.imports)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunSpec":
        d = dict(d)
        d["recipe"] = Recipe(**{**d["recipe"], "lr_milestones": tuple(d["recipe"]["lr_milestones"])})
        d["overrides"] = tuple(sorted(d.get("overrides", {}).items()))
        d["imports"] = tuple(d.get("imports", ()))
        return cls(**d)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable in a run key: {o!r}")


def short_hash(obj: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


@lru_cache(maxsize=64)
def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ResolvedSpec:
    """A spec with everything that determines its result made explicit (what is hashed).

    ``model_versions`` are the registered versions of the student and teacher architectures
    (``kdbench.models.model_version``): renaming or changing a model bumps it, so a cached
    teacher or a finished run of the old model is never silently reused.
    """

    spec: RunSpec
    method_version: int
    method_config: dict[str, Any]
    student_lr: float
    teacher_key: str | None
    model_versions: dict[str, int | None] = field(default_factory=dict)
    engine_version: int = ENGINE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        s = self.spec
        return {
            "dataset": s.dataset, "student": s.student, "method": s.method,
            "method_version": self.method_version, "method_config": self.method_config,
            "model_versions": self.model_versions,
            "seed": s.seed, "recipe": dataclasses.asdict(s.recipe), "student_lr": self.student_lr,
            "teacher": s.teacher, "teacher_key": self.teacher_key, "engine_version": self.engine_version,
            **({"extra": self.extra} if self.extra else {}),
        }

    @property
    def key(self) -> str:
        return short_hash(self.identity())
