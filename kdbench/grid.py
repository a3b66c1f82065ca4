"""Grids: pairs × methods × seeds on one dataset, from flags or a YAML grid file.

Expansion is deterministic (pairs in the given order, then methods, then seeds) and
always includes the ``vanilla`` and ``kd`` rows every report needs. ``vanilla`` runs
have no teacher, so one vanilla run per student serves every pair with that student.
Everything is validated before anything trains: unknown methods, models, datasets,
pair syntax, method options and grid-file keys are errors that say what is valid.

Grid files are plain YAML data (``yaml.safe_load``), never code::

    dataset: cifar100
    pairs: crd                 # a preset name, or a list of "teacher->student"
    methods: all               # or a list: [kd, at, dkd]
    seeds: 3                   # a count (0..2) or a list [0, 1, 2]
    epochs: 240                # shorthand for recipe: {epochs: 240}
    recipe: {batch_size: 64, lr: 0.05}
    teacher_seed: 0
    teacher_epochs: 240        # the teachers' own schedule (default: the dataset's, else the students' epochs)
    teachers: {resnet32x4: /ckpts/resnet32x4.pth}   # use these checkpoints instead of training
    overrides: {kd: {temperature: 2}, dkd: {beta: 6}}
    imports: [mypkg.my_method]
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdbench.config import resolve_config
from kdbench.registry import METHODS, MODELS, UnknownNameError, import_user_modules
from kdbench.spec import Recipe, RecipeError, RunSpec

log = logging.getLogger(__name__)

#: Named pair presets (teacher, student).
PAIR_PRESETS: dict[str, tuple[tuple[str, str], ...]] = {
    # the small default pair for `digits`: a 20-layer teacher, an 8-layer student
    "digits": (("resnet20", "resnet8"),),
    # CNN2GNN paper (Jiao, Zhang, Li 2024), 9 columns, inferred from its text (REFERENCE §3)
    "cnn2gnn": (
        ("resnet34", "resnet18"), ("resnet50", "resnet18"), ("resnet101", "resnet18"), ("resnet152", "resnet18"),
        ("vgg13", "vgg8"), ("vgg16", "vgg8"), ("vgg19", "vgg8"), ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"),
    ),
    # CRD (Tian et al. 2020) CIFAR-100 benchmark, same-family then cross-family pairs
    "crd_same": (
        ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
        ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"),
    ),
    "crd_cross": (
        ("vgg13", "mobilenetv2"), ("resnet50", "mobilenetv2"), ("resnet50", "vgg8"), ("resnet32x4", "shufflev1"),
        ("resnet32x4", "shufflev2"), ("wrn_40_2", "shufflev1"),
    ),
    # HKD (Zhou et al. ICCV 2021): Table 1 (CIFAR-100) and Table 2 (Tiny-ImageNet, whose fifth
    # column is vgg13->vgg8 instead of resnet50->mobilenetv2)
    "hkd": (
        ("resnet32x4", "resnet8x4"), ("resnet32x4", "shufflev2"), ("vgg13", "mobilenetv2"), ("resnet50", "vgg8"),
        ("resnet50", "mobilenetv2"),
    ),
    "hkd_tiny_imagenet": (
        ("resnet32x4", "resnet8x4"), ("resnet32x4", "shufflev2"), ("vgg13", "mobilenetv2"), ("resnet50", "vgg8"),
        ("vgg13", "vgg8"),
    ),
}
PAIR_PRESETS["crd"] = PAIR_PRESETS["crd_same"] + PAIR_PRESETS["crd_cross"]

#: The preset used when ``--pairs`` is not given.
DEFAULT_PAIRS = {"digits": "digits", "cifar100": "crd", "cifar10": "crd", "mini_imagenet": "cnn2gnn",
                 "stl10": "cnn2gnn", "tiny_imagenet": "hkd_tiny_imagenet"}

#: Methods every grid includes, first.
BASELINES = ("vanilla", "kd")

#: Seeds are integers in [0, SEED_MAX] (what every RNG accepts); a count is at most MAX_SEED_COUNT.
SEED_MAX = 2**31 - 1
MAX_SEED_COUNT = 1000

GRID_KEYS = {"dataset", "pairs", "methods", "seeds", "epochs", "recipe", "teacher_seed", "teacher_epochs", "teachers",
             "overrides", "imports", "runner", "fuse"}


class GridError(ValueError):
    """A grid (file or flags) is malformed; the message says where and what is valid."""


@dataclass
class Grid:
    dataset: str = "digits"
    pairs: list[tuple[str, str]] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: ["all"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    recipe: Recipe | None = None  # None: the dataset's own recipe
    teacher_seed: int = 0
    teacher_epochs: int | None = None
    teachers: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    imports: list[str] = field(default_factory=list)
    runner: dict[str, Any] = field(default_factory=dict)
    #: train each grid column in one fused pass (:mod:`kdbench.column`); at most
    #: ``fuse_max`` runs per pass (None: no limit). Execution only: no run key changes.
    fuse: bool = False
    fuse_max: int | None = None

    def resolved_recipe(self) -> Recipe:
        if self.recipe is not None:
            return self.recipe
        return dataset_entry(self.dataset).recipe

    def resolved_teacher_epochs(self) -> int | None:
        if self.teacher_epochs is not None:
            return self.teacher_epochs
        return dataset_entry(self.dataset).teacher_epochs

    def method_names(self) -> list[str]:
        names: list[str] = list(BASELINES)
        for m in self.methods:
            for name in (METHODS.list() if m == "all" else [m]):
                if name not in names:
                    names.append(name)
        return names

    def needs_teacher(self, method: str) -> bool:
        """Whether ``method``, configured as this grid overrides it, uses a teacher."""
        cls = METHODS.get(method)
        return cls.needs(resolve_config(cls, self.overrides.get(method, {}))).teacher

    def student_of(self, method: str, pair_student: str) -> str:
        """The student a run of ``method`` trains: the pair's, or the method's own type
        (``Method.student_name``: e.g. CNN2GNN's ``gnn``, shared by every column)."""
        cls = METHODS.get(method)
        return cls.student_name(resolve_config(cls, self.overrides.get(method, {}))) or pair_student

    def expand(self) -> list[RunSpec]:
        """All runs of the grid, validated, in a deterministic order. Runs that do not depend
        on the pair are listed once: ``vanilla`` per student, a method with its own student
        type per teacher (or once, without a teacher)."""
        import_user_modules(self.imports)
        self.validate()
        recipe = self.resolved_recipe()
        teacher_epochs = self.resolved_teacher_epochs()
        specs: list[RunSpec] = []
        seen: set[RunSpec] = set()
        for teacher, student in self.pairs:
            for method in self.method_names():
                needs_teacher = self.needs_teacher(method)
                for seed in self.seeds:
                    spec = RunSpec(
                        dataset=self.dataset, student=self.student_of(method, student), method=method, seed=seed,
                        recipe=recipe,
                        teacher=teacher if needs_teacher else None,
                        overrides=tuple(sorted(_hashable(self.overrides.get(method, {})).items())),
                        teacher_seed=self.teacher_seed,
                        teacher_epochs=teacher_epochs if needs_teacher else None,
                        teacher_ckpt=self.teachers.get(teacher) if needs_teacher else None,
                        imports=tuple(self.imports),
                    )
                    if spec not in seen:
                        seen.add(spec)
                        specs.append(spec)
        return specs

    def validate(self) -> None:
        dataset_entry(self.dataset)
        if not self.pairs:
            raise GridError("the grid has no teacher->student pairs")
        for teacher, student in self.pairs:
            for name in (teacher, student):
                try:
                    MODELS.get(name)  # resolves timm:/tv: names too, with suggestions
                except UnknownNameError as exc:
                    raise GridError(f"pair {teacher}->{student}: {exc}") from None
        for name in self.method_names():
            if name not in METHODS:
                raise GridError(METHODS.unknown_message(name))
        for name, opts in self.overrides.items():
            if name not in METHODS:
                raise GridError(f"overrides: {METHODS.unknown_message(name)}")
            if not isinstance(opts, dict):
                raise GridError(f"overrides.{name} must be a mapping of option: value, got {opts!r}")
            resolve_config(METHODS.get(name), opts)
        grid_teachers = list(dict.fromkeys(t for t, _ in self.pairs))
        for arch, path in self.teachers.items():
            if arch not in grid_teachers:
                raise GridError(f"teachers.{arch}: {arch!r} is not the teacher of any pair of this grid; its teachers "
                                f"are {', '.join(grid_teachers)} (a checkpoint replaces the teacher ARCH of pairs "
                                f"ARCH->student)")
            if not Path(path).expanduser().is_file():
                raise GridError(f"teachers.{arch}: checkpoint {path} does not exist")
            from kdbench.teachers.checkpoints import CheckpointError, verify_teacher_checkpoint

            entry = dataset_entry(self.dataset)
            try:  # read weights-only and checked against the architecture before anything trains
                verify_teacher_checkpoint(arch, path, entry.num_classes, self.dataset, len(entry.mean), entry.image_size)
            except CheckpointError as exc:
                raise GridError(f"teachers.{arch}: {exc}") from None
        parse_seeds(list(self.seeds))  # a Grid built in code is checked like flags and files
        checked_int("teacher_seed", self.teacher_seed, 0, SEED_MAX)
        if self.teacher_epochs is not None:
            checked_int("teacher_epochs", self.teacher_epochs, 1)


def _hashable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def dataset_entry(name: str):
    from kdbench.datasets import get_dataset

    try:
        return get_dataset(name)
    except UnknownNameError as exc:
        raise GridError(str(exc)) from None


def parse_pairs(text: str | list | tuple | None, dataset: str) -> list[tuple[str, str]]:
    """A preset name, ``"t->s,t2->s2"`` or a list of such strings / [t, s] pairs."""
    if text is None or text == "":
        text = DEFAULT_PAIRS.get(dataset, "digits")
    if not isinstance(text, (str, list, tuple)):
        raise GridError(f"pairs must be a preset name ({', '.join(PAIR_PRESETS)}), 'teacher->student,…' or a list "
                        f"of 'teacher->student', got {text!r}")
    items: list[Any]
    if isinstance(text, str):
        if text in PAIR_PRESETS:
            return list(PAIR_PRESETS[text])
        items = [t.strip() for t in text.split(",") if t.strip()]
    else:
        items = list(text)
    pairs = []
    for item in items:
        if isinstance(item, str) and item in PAIR_PRESETS:
            pairs.extend(PAIR_PRESETS[item])
            continue
        if isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append((str(item[0]), str(item[1])))
            continue
        if isinstance(item, str) and "->" in item:
            t, _, s = item.partition("->")
            if t.strip() and s.strip():
                pairs.append((t.strip(), s.strip()))
                continue
        close = difflib.get_close_matches(str(item), list(PAIR_PRESETS), n=2, cutoff=0.6)
        hint = f" Did you mean preset {', '.join(map(repr, close))}?" if close else ""
        raise GridError(f"bad pair {item!r}: write 'teacher->student' (e.g. resnet32x4->resnet8x4) or a preset "
                        f"({', '.join(PAIR_PRESETS)}).{hint}")
    return pairs


def parse_methods(value: str | list | None) -> list[str]:
    if value is None or value == "":
        return ["all"]
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    if isinstance(value, list) and all(isinstance(m, str) for m in value):
        return value
    raise GridError(f"methods must be 'all', a comma-separated string or a list of names, got {value!r}")


def parse_seeds(value: int | str | list | None) -> list[int]:
    """A count N (seeds 0..N-1, N at most :data:`MAX_SEED_COUNT`), ``"0,3,7"`` or a list of
    distinct integers in [0, :data:`SEED_MAX`]."""
    if value is None:
        return [0, 1]
    if isinstance(value, str):
        try:
            value = int(value) if "," not in value else [int(v) for v in value.split(",")]
        except ValueError:
            raise GridError(f"seeds must be a count or a comma-separated list of integers, got {value!r}") from None
    if _is_int(value):
        if not 1 <= value <= MAX_SEED_COUNT:
            raise GridError(f"a seed count must be in [1, {MAX_SEED_COUNT}], got {value}; "
                            f"for particular seeds give a list, e.g. --seeds 0,3,7")
        return list(range(value))
    if isinstance(value, list) and value and all(_is_int(v) for v in value):
        bad = [v for v in value if not 0 <= v <= SEED_MAX]
        if bad:
            raise GridError(f"seeds must be integers in [0, {SEED_MAX}], got {bad[0]}")
        repeated = sorted({v for v in value if value.count(v) > 1})
        if repeated:
            raise GridError(f"seeds lists seed(s) {', '.join(map(str, repeated))} more than once: {value}")
        return list(value)
    raise GridError(f"seeds must be a count or a non-empty list of integers, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def checked_int(key: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer in [low, high], else a :class:`GridError` naming ``key``."""
    if _is_int(value) and value >= low and (high is None or value <= high):
        return value
    valid = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
    raise GridError(f"{key} must be {valid}, got {value!r}")


def load_grid_file(path: str | Path) -> dict[str, Any]:
    """Read and shape-check a YAML grid file (plain data only)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise GridError(f"grid file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise GridError(f"grid file {path} is not valid YAML: {exc}") from None
    if data is None or data == {}:
        raise GridError(f"grid file {path} is empty: give at least one of {', '.join(sorted(GRID_KEYS))} "
                        f"(without --grid the default grid runs)")
    if not isinstance(data, dict):
        raise GridError(f"grid file {path}: the top level must be a mapping of {sorted(GRID_KEYS)}")
    unknown = sorted(set(data) - GRID_KEYS)
    if unknown:
        hints = {u: difflib.get_close_matches(u, GRID_KEYS, n=1) for u in unknown}
        said = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
        raise GridError(f"grid file {path}: unknown key(s) {said}; valid keys: {', '.join(sorted(GRID_KEYS))}")
    for key, kind in (("recipe", dict), ("teachers", dict), ("overrides", dict), ("runner", dict), ("imports", list)):
        if key in data and not isinstance(data[key], kind):
            raise GridError(f"grid file {path}: {key!r} must be a {'mapping' if kind is dict else 'list'}, "
                            f"got {data[key]!r}")
    return data


def build_grid(file_values: dict[str, Any] | None = None, **flags: Any) -> Grid:
    """Combine a grid file's values with command-line flags (flags win when given)."""
    values = dict(file_values or {})
    values.update({k: v for k, v in flags.items() if v is not None})
    dataset = str(values.get("dataset", "digits"))
    prefix, sep, path = dataset.partition(":")
    if sep and prefix == "imagefolder":  # a relative path must mean the same folder in every job
        dataset = f"imagefolder:{Path(path).expanduser().resolve()}"
    grid = Grid(
        dataset=dataset,
        pairs=parse_pairs(values.get("pairs"), dataset),
        methods=parse_methods(values.get("methods")),
        seeds=parse_seeds(values.get("seeds")),
        teacher_seed=checked_int("teacher_seed", values.get("teacher_seed", 0), 0, SEED_MAX),
        teacher_epochs=None if values.get("teacher_epochs") is None
        else checked_int("teacher_epochs", values["teacher_epochs"], 1),
        teachers={str(k): str(v) for k, v in (values.get("teachers") or {}).items()},
        overrides={str(k): dict(v) if isinstance(v, dict) else v for k, v in (values.get("overrides") or {}).items()},
        imports=[str(m) for m in (values.get("imports") or [])],
        runner=dict(values.get("runner") or {}),
    )
    grid.fuse, grid.fuse_max = parse_fuse(values.get("fuse"), values.get("fuse_max"))
    recipe_changes = dict(values.get("recipe") or {})
    if values.get("epochs") is not None:
        recipe_changes["epochs"] = values["epochs"]  # checked by Recipe: 1.7 is an error, not 1
    if values.get("amp"):
        recipe_changes["amp"] = True
    if recipe_changes:
        try:
            grid.recipe = dataset_entry(dataset).recipe.replace(**recipe_changes)
        except RecipeError as exc:  # names the field already
            raise GridError(str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise GridError(f"recipe: {exc}") from None
    return grid


def parse_fuse(fuse: Any, fuse_max: Any = None) -> tuple[bool, int | None]:
    """``fuse`` of a grid file (``true``/``false``, or N: fused with at most N runs per
    pass) and ``--fuse-max N`` (implies fusing) as (fuse, max runs per pass)."""
    limit = None
    if fuse is None or isinstance(fuse, bool):
        on = bool(fuse)
    elif isinstance(fuse, int) and fuse >= 1:
        on, limit = True, fuse
    else:
        raise GridError(f"fuse must be true, false or the most runs per fused pass (an integer >= 1), got {fuse!r}")
    if fuse_max is not None:
        on, limit = True, checked_int("--fuse-max", fuse_max, 1)
    return on, limit


def with_overrides(grid: Grid, assignments: list[str]) -> Grid:
    """Apply ``--set method.option=value`` assignments."""
    overrides = {k: dict(v) for k, v in grid.overrides.items()}
    for a in assignments:
        target, eq, value = a.partition("=")
        method, dot, option = target.partition(".")
        if not (eq and dot and method and option):
            raise GridError(f"--set {a!r}: write method.option=value, e.g. --set kd.temperature=2")
        overrides.setdefault(method.strip(), {})[option.strip()] = value.strip()
    return dataclasses.replace(grid, overrides=overrides)
