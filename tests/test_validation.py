"""Bad input is one clear error line and exit code 2, before anything is written."""
import pytest

from kdbench.cli import main
from kdbench.grid import GridError, build_grid, parse_seeds
from kdbench.spec import Recipe, RecipeError
from kdbench.train import Env


def fails_cleanly(capsys, tmp_path, *argv):
    """Run the CLI; assert exit 2, a single stderr line and no results folder; return it."""
    out = tmp_path / "out"
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
    return err


@pytest.mark.parametrize("flags,message", [
    (["--lr", "-1"], "recipe.lr must be a finite number > 0, got -1.0"),
    (["--lr", "0"], "recipe.lr must be a finite number > 0, got 0.0"),
    (["--lr", "nan"], "recipe.lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "recipe.lr must be a finite number > 0, got inf"),
    (["--epochs", "0"], "recipe.epochs must be an integer >= 1, got 0"),
    (["--batch-size", "1"], "recipe.batch_size must be an integer >= 2, got 1"),
    (["--seeds", "4294967296"], "a seed count must be in [1, 1000], got 4294967296"),
    (["--seeds", "-1"], "a seed count must be in [1, 1000], got -1"),
    (["--seeds", "0,-3"], "seeds must be integers in [0, 2147483647], got -3"),
    (["--seeds", "0,2147483648"], "seeds must be integers in [0, 2147483647], got 2147483648"),
    (["--seeds", "1,1"], "seeds lists seed(s) 1 more than once"),
    (["--teacher-seed", "-1"], "teacher_seed must be an integer in [0, 2147483647], got -1"),
    (["--teacher-epochs", "0"], "teacher_epochs must be an integer >= 1, got 0"),
])
def test_bad_flags(capsys, tmp_path, flags, message):
    for command in (["run"], ["run", "--dry-run"], ["status"]):
        assert message in fails_cleanly(capsys, tmp_path, *command, "--methods", "kd", *flags)


@pytest.mark.parametrize("text,message", [
    ("epochs: 1.7\n", "recipe.epochs must be an integer >= 1, got 1.7"),
    ("epochs: abc\n", "recipe.epochs must be an integer >= 1, got 'abc'"),
    ("epochs: [1, 2]\n", "recipe.epochs must be an integer >= 1, got [1, 2]"),
    ("epochs: true\n", "recipe.epochs must be an integer >= 1, got True"),
    ("teacher_epochs: [1]\n", "teacher_epochs must be an integer >= 1, got [1]"),
    ("teacher_epochs: 2.5\n", "teacher_epochs must be an integer >= 1, got 2.5"),
    ("teacher_seed: one\n", "teacher_seed must be an integer in [0, 2147483647], got 'one'"),
    ("pairs: 5\n", "pairs must be a preset name"),
    ("seeds: [0, -1]\n", "seeds must be integers in [0, 2147483647], got -1"),
    ("seeds: []\n", "seeds must be a count or a non-empty list of integers, got []"),
    ("recipe: {lr: fast}\n", "recipe.lr must be a finite number > 0, got 'fast'"),
    ("recipe: {lr_lightweight: -0.1}\n", "recipe.lr_lightweight must be a finite number > 0, got -0.1"),
    ("recipe: {momentum: 1.5}\n", "recipe.momentum must be a number in [0, 1), got 1.5"),
    ("recipe: {weight_decay: -1.0}\n", "recipe.weight_decay must be a finite number >= 0, got -1.0"),
    ("recipe: {weight_decay: 5e-4}\n", "got '5e-4' (text, not a number: in YAML write 5.0e-4, not 5e-4)"),
    ("recipe: {lr_decay: 0}\n", "recipe.lr_decay must be a number in (0, 1], got 0"),
    ("recipe: {lr_milestones: [0.5, 1.5]}\n", "recipe.lr_milestones must be a list of fractions"),
    ("recipe: {lr_milestones: 0.5}\n", "recipe.lr_milestones must be a list of fractions"),
    ("recipe: {amp: 1}\n", "recipe.amp must be true or false, got 1"),
    ("", "is empty: give at least one of"),
    ("# only a comment\n", "is empty: give at least one of"),
    ("{}\n", "is empty: give at least one of"),
])
def test_bad_grid_files(capsys, tmp_path, text, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    for command in (["run"], ["run", "--dry-run"], ["status"]):
        assert message in fails_cleanly(capsys, tmp_path, *command, "--grid", str(grid))


@pytest.mark.parametrize("device,message", [
    ("tpu", "--device 'tpu' is not a device: write cpu, cuda, cuda:N or mps (available here: cpu"),
    ("cuda:abc", "--device 'cuda:abc' is not a device"),
    ("cuda:99", "--device cuda:99 is not available here (available: cpu"),
])
def test_bad_devices(capsys, tmp_path, device, message):
    assert message in fails_cleanly(capsys, tmp_path, "run", "--methods", "kd", "--device", device)


def test_cuda_without_cuda(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    err = fails_cleanly(capsys, tmp_path, "run", "--methods", "kd", "--device", "cuda")
    assert "--device cuda is not available here (available: cpu)" in err


def test_valid_devices_pass():
    assert str(Env(device="cpu").torch_device) == "cpu" and str(Env(device=" CPU ").torch_device) == "cpu"


def test_out_is_checked_before_the_dataset_loads(capsys, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("")
    missing = tmp_path / "no-data"
    missing.mkdir()
    # the dataset is missing too: the --out error must come first (nothing is loaded)
    code = main(["run", "--dataset", "cifar100", "--data-root", str(missing), "--methods", "kd",
                 "--out", str(target)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--out {target} is a file, not a folder" in err
    code = main(["run", "--dataset", "cifar100", "--data-root", str(missing), "--methods", "kd",
                 "--out", str(target / "below")])
    assert code == 2 and "cannot be written" in capsys.readouterr().err


def test_recipe_values_are_never_coerced():
    with pytest.raises(RecipeError, match="got 1.7"):
        Recipe(epochs=1.7)
    with pytest.raises(RecipeError, match="got True"):
        Recipe(batch_size=True)
    assert Recipe(lr=1, epochs=3).lr == 1  # an integer learning rate is a number
    assert Recipe().replace(lr_milestones=[0.5]).lr_milestones == (0.5,)


def test_seeds_in_range_pass():
    assert parse_seeds(3) == [0, 1, 2] and parse_seeds("1000")[-1] == 999
    assert parse_seeds("0,2147483647") == [0, 2**31 - 1]
    with pytest.raises(GridError, match="got 1001"):
        parse_seeds(1001)
    with pytest.raises(GridError, match="got 1.5"):
        parse_seeds(1.5)
    assert build_grid({"recipe": {"lr": 0.1}}).recipe.lr == 0.1  # as set (the defaults are 0.05)
