"""The shipped paper grids (``grids/*.yaml``): each loads, expands to the paper's runs with every
method resolved, and gives the same run keys as the command line the README shows."""
import re
from pathlib import Path

import pytest

from kdbench.cli import grid_from_args, make_parser, merge_global_options
from kdbench.grid import PAIR_PRESETS, build_grid, load_grid_file
from kdbench.registry import METHODS
from kdbench.run import resolve

ROOT = Path(__file__).resolve().parents[1]
HKD_METHODS = ["kd", "at+kd", "pkt+kd", "sp+kd", "cc+kd", "rkd+kd", "crd+kd", "hkd", "hkd+kd"]
HKD_GRIDS = {"hkd_cifar100.yaml": ("cifar100", "hkd"), "hkd_tiny_imagenet.yaml": ("tiny_imagenet", "hkd_tiny_imagenet")}


def test_every_shipped_grid_is_listed_here():
    assert sorted(p.name for p in (ROOT / "grids").glob("*.yaml")) == sorted(HKD_GRIDS)


@pytest.mark.parametrize("name", sorted(HKD_GRIDS))
def test_the_hkd_grids_expand_to_the_papers_tables(name):
    dataset, preset = HKD_GRIDS[name]
    grid = build_grid(load_grid_file(ROOT / "grids" / name))
    assert grid.dataset == dataset and list(grid.pairs) == list(PAIR_PRESETS[preset]) and len(grid.pairs) == 5
    assert grid.method_names() == ["vanilla", *HKD_METHODS] and grid.seeds == [0, 1, 2]
    specs = grid.expand()
    students = {s for _, s in grid.pairs}
    assert len(specs) == 5 * len(HKD_METHODS) * 3 + len(students) * 3  # one vanilla run per student and seed
    keys = set()
    for spec in specs:
        assert spec.method in METHODS  # X+kd compositions resolve too
        keys.add(resolve(spec).key)  # config with defaults, versions, key: every run resolves
        assert spec.recipe.epochs == 240 and spec.recipe.batch_size == 64 and spec.recipe.lr == 0.05
    assert len(keys) == len(specs)
    # the README's flags form of the same grid: identical run keys
    args = merge_global_options(make_parser().parse_args(
        ["run", "--dataset", dataset, "--pairs", preset, "--seeds", "3", "--methods", ",".join(HKD_METHODS)]))
    assert {resolve(s).key for s in grid_from_args(args).expand()} == keys


def test_the_readme_runs_the_shipped_grids():
    readme = (ROOT / "README.md").read_text()
    for name in HKD_GRIDS:
        assert re.search(rf"kdbench run --grid grids/{re.escape(name)}", readme), name
