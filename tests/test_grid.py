"""Grid expansion, presets, grid files and run keys."""
import dataclasses

import pytest

from kdbench.grid import PAIR_PRESETS, GridError, build_grid, load_grid_file, parse_pairs, with_overrides
from kdbench.run import resolve
from kdbench.spec import Recipe, RunSpec
from harness import CRD_GRID


def test_presets_hold_the_published_grids():
    # written out from REFERENCE §3 (CNN2GNN, inferred columns) and the HKD paper's CIFAR-100 table
    assert list(PAIR_PRESETS["cnn2gnn"]) == [
        ("resnet34", "resnet18"), ("resnet50", "resnet18"), ("resnet101", "resnet18"), ("resnet152", "resnet18"),
        ("vgg13", "vgg8"), ("vgg16", "vgg8"), ("vgg19", "vgg8"), ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1")]
    assert list(PAIR_PRESETS["hkd"]) == [
        ("resnet32x4", "resnet8x4"), ("resnet32x4", "shufflev2"), ("vgg13", "mobilenetv2"), ("resnet50", "vgg8"),
        ("resnet50", "mobilenetv2")]
    assert list(PAIR_PRESETS["hkd_tiny_imagenet"]) == [  # the columns of HKD's Tiny-ImageNet table
        ("resnet32x4", "resnet8x4"), ("resnet32x4", "shufflev2"), ("vgg13", "mobilenetv2"), ("resnet50", "vgg8"),
        ("vgg13", "vgg8")]
    assert parse_pairs(None, "tiny_imagenet") == list(PAIR_PRESETS["hkd_tiny_imagenet"])
    assert list(PAIR_PRESETS["digits"]) == [("resnet20", "resnet8")]
    # the CRD grid (harness.CRD_GRID, written out independently): 7 same-family then 6 cross-family pairs
    assert list(PAIR_PRESETS["crd"]) == CRD_GRID
    assert list(PAIR_PRESETS["crd_same"]) == CRD_GRID[:7]
    assert list(PAIR_PRESETS["crd_cross"]) == CRD_GRID[7:]
    assert parse_pairs(None, "digits") == list(PAIR_PRESETS["digits"])
    assert parse_pairs(None, "mini_imagenet") == list(PAIR_PRESETS["cnn2gnn"])


def test_expansion_is_deterministic_adds_baselines_and_shares_vanilla():
    grid = build_grid({}, dataset="digits", pairs="resnet20->resnet8,resnet14->resnet8", methods="kd", seeds=2)
    specs = grid.expand()
    assert specs == grid.expand()
    methods = [s.method for s in specs]
    assert methods.count("vanilla") == 2  # one per seed, shared by both pairs (same student)
    assert methods.count("kd") == 4
    assert all(s.teacher is None for s in specs if s.method == "vanilla")
    assert [s.seed for s in specs[:2]] == [0, 1]
    # 'all' includes every registered method, baselines first
    names = build_grid({}, dataset="digits").method_names()
    assert names[:2] == ["vanilla", "kd"]


def test_run_keys_depend_on_what_changes_results_only():
    r = Recipe(epochs=3)
    a = RunSpec(dataset="digits", student="resnet8", method="kd", seed=0, recipe=r, teacher="resnet20")
    assert resolve(a).key == resolve(dataclasses.replace(a)).key
    assert resolve(a).key != resolve(dataclasses.replace(a, seed=1)).key
    assert resolve(a).key != resolve(dataclasses.replace(a, teacher_seed=1)).key  # via the teacher key
    assert resolve(a).key != resolve(dataclasses.replace(a, recipe=Recipe(epochs=4))).key
    t2 = dataclasses.replace(a, overrides=(("temperature", 2.0),))
    assert resolve(a).key != resolve(t2).key
    # an override equal to the default resolves to the same run; a CLI string parses the same
    assert resolve(a).key == resolve(dataclasses.replace(a, overrides=(("temperature", "4"),))).key
    assert resolve(t2).key == resolve(dataclasses.replace(a, overrides=(("temperature", "2"),))).key


def test_bad_grids_are_clear_errors(tmp_path):
    with pytest.raises(GridError, match="did you mean 'methods'"):
        p = tmp_path / "g.yaml"
        p.write_text("dataset: digits\nmethod: [kd]\n")
        load_grid_file(p)
    p.write_text("dataset: [digits\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid_file(p)
    p.write_text("- kd\n")
    with pytest.raises(GridError, match="top level must be a mapping"):
        load_grid_file(p)
    with pytest.raises(GridError, match="bad pair 'resnet20'"):
        parse_pairs("resnet20", "digits")
    with pytest.raises(GridError, match="Did you mean preset 'crd'"):
        parse_pairs("crdd", "digits")
    with pytest.raises(GridError, match="seeds"):
        build_grid({"seeds": "two"})
    with pytest.raises(GridError, match="Did you mean 'resnet8x4'"):
        build_grid({}, pairs="resnet32x4->resnet8x5").expand()
    with pytest.raises(GridError, match="Did you mean 'kd'"):
        build_grid({}, methods="kdd").expand()
    with pytest.raises(ValueError, match="unknown kd option"):
        build_grid({"overrides": {"kd": {"temp": 2}}}).expand()
    with pytest.raises(ValueError, match="must be a number"):
        with_overrides(build_grid({}), ["kd.temperature=hot"]).expand()
    with pytest.raises(GridError, match="recipe: unknown recipe field"):
        build_grid({"recipe": {"epoch": 3}})
    with pytest.raises(GridError, match="Did you mean 'digits'"):
        build_grid({}, dataset="digit").expand()


def test_grid_file_values_and_flags_combine(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("dataset: digits\npairs: [resnet20->resnet8, [resnet14, resnet8]]\nmethods: [kd]\nseeds: [3, 5]\n"
                 "epochs: 2\nrecipe: {batch_size: 32}\noverrides: {kd: {temperature: 2}}\n")
    grid = build_grid(load_grid_file(p), seeds="1")
    assert grid.pairs == [("resnet20", "resnet8"), ("resnet14", "resnet8")]
    assert grid.seeds == [0] and grid.recipe.epochs == 2 and grid.recipe.batch_size == 32
    kd = [s for s in grid.expand() if s.method == "kd"][0]
    assert dict(kd.overrides) == {"temperature": 2}


def test_a_grid_built_in_code_is_checked_like_flags():
    grid = build_grid({}, methods="kd")
    for changes, message in [({"seeds": []}, "non-empty list"), ({"seeds": [-1]}, "got -1"),
                             ({"seeds": [0, 0]}, "more than once"), ({"teacher_seed": 2**31}, "teacher_seed"),
                             ({"teacher_epochs": 0}, "teacher_epochs must be an integer >= 1, got 0")]:
        with pytest.raises(GridError, match=message):
            dataclasses.replace(grid, **changes).expand()
