"""Registries: suggestions, duplicates, patterns, and third-party plugins via entry points."""
import textwrap

import pytest

from kdbench.registry import METHODS, MODELS, Registry, UnknownNameError, import_user_modules


def test_registry_basics():
    reg = Registry("widget")
    reg.register("alpha")(object)
    reg.register("alpine", size=3)(int)
    with pytest.raises(ValueError, match="duplicate widget name 'alpha'"):
        reg.register("alpha")(str)
    with pytest.raises(ValueError, match="lowercase"):
        reg.register("Beta")
    assert reg.list("alp*") == ["alpha", "alpine"] and "alpha" in reg and "beta" not in reg
    assert reg.meta("alpine") == {"size": 3}
    with pytest.raises(UnknownNameError) as err:
        reg.get("alpah")
    assert "Did you mean 'alpha'" in str(err.value) and "Available: alpha, alpine" in str(err.value)
    reg.register_prefix("ext", lambda rest: f"ext({rest})")
    assert reg.get("ext:thing") == "ext(thing)" and "ext:x" in reg


def test_builtin_registries_are_populated_lazily():
    assert {"vanilla", "kd"} <= set(METHODS.list())
    assert {"resnet8x4", "resnet32x4", "wrn_40_2", "vgg13", "mobilenetv2", "shufflev2", "resnet18"} <= set(MODELS.list())
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet8x4'"):
        MODELS.get("resnet8x5")


PLUGIN = '''
"""A third-party method package that knows nothing of kdbench's registry decorators."""
from dataclasses import dataclass
from kdbench.method import MethodConfig
from kdbench.methods.kd import KD


class SharperKD(KD):
    """KD at temperature 2 (a toy plugin)."""
    name = "toy_plugin_kd"

    @dataclass(frozen=True)
    class Config(KD.Config):
        temperature: float = 2.0
'''


def write_plugin_distribution(site):
    pkg = site / "kdbench_toy_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "kdbench_toy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kdbench-toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[kdbench.methods]\ntoy_plugin_kd = kdbench_toy_plugin:SharperKD\nbroken_plugin = kdbench_not_there:Nope\n")


def test_an_installed_plugin_shows_up_in_list_and_runs(tmp_path, cli):
    site = tmp_path / "site"
    write_plugin_distribution(site)
    env = {"PYTHONPATH": str(site)}
    listed = cli("list", "methods", env=env, check=True)
    assert "toy_plugin_kd" in listed.stdout and "KD at temperature 2" in listed.stdout
    assert "plugin 'broken_plugin' failed to load" in listed.stdout  # reported, not a crash
    asked = cli("run", "--dry-run", "--methods", "broken_plugin", "--out", str(tmp_path / "out"), env=env)
    assert asked.returncode == 2
    assert ("method 'broken_plugin' could not be loaded: ModuleNotFoundError: No module named 'kdbench_not_there'"
            in asked.stderr) and "unknown method" not in asked.stderr
    run = cli("run", "--methods", "toy_plugin_kd", "--pairs", "resnet8->resnet8", "--epochs", "1", "--teacher-epochs", "2", "--seeds", "1",
              "--batch-size", "128", "--no-progress", "--out", str(tmp_path / "out"), env=env, check=True)
    board = run.stdout.split("wall time")[0]
    assert "toy_plugin_kd" in board
    assert any(ln.split()[:1] == ["kd"] for ln in board.splitlines()), board  # the kd baseline's own row
    line = [ln for ln in board.splitlines() if ln.startswith("toy_plugin_kd")][0]
    assert any(a in line for a in "↑↓=")


def test_import_flag_registers_unpackaged_code(tmp_path, cli):
    listed = cli("list", "methods", "--import", "kdbench_toys", check=True)
    assert "toy_nan" in listed.stdout and "toy_decline" in listed.stdout
    bad = cli("list", "methods", "--import", "no_such_module_here")
    assert bad.returncode == 2
    assert "--import 'no_such_module_here' failed: no module 'no_such_module_here'" in bad.stderr
    before = cli("--import", "kdbench_toys", "list", "methods", check=True)  # a global option before the subcommand
    assert "toy_nan" in before.stdout


def test_a_plugin_that_failed_to_load_says_so_when_asked_for():
    reg = Registry("widget")
    reg.register("alpha")(object)
    reg.failed_plugins["beta"] = "ModuleNotFoundError: No module named 'beta_dep'"
    with pytest.raises(UnknownNameError) as err:
        reg.get("beta")
    assert str(err.value) == "widget 'beta' could not be loaded: ModuleNotFoundError: No module named 'beta_dep'"
    assert "Did you mean" in reg.unknown_message("alpah")


@pytest.mark.parametrize("source,module,message", [
    ("import kdbench_dep_not_installed\n", "toy_needs_dep",
     "importing 'toy_needs_dep' failed: No module named 'kdbench_dep_not_installed'"),
    ("raise RuntimeError('half-written plugin')\n", "toy_raises",
     "importing 'toy_raises' failed: RuntimeError: half-written plugin"),
    ("from kdbench.registry import no_such_name\n", "toy_bad_name",
     "importing 'toy_bad_name' failed: ImportError: cannot import name 'no_such_name'"),
    (None, "toy_absent", "--import 'toy_absent' failed: no module 'toy_absent' on the current directory or PYTHONPATH"),
    (None, "toy_absent_pkg.sub", "--import 'toy_absent_pkg.sub' failed: no module 'toy_absent_pkg'"),
])
def test_import_says_whether_the_module_or_its_dependency_is_missing(tmp_path, monkeypatch, source, module, message):
    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as err:
        import_user_modules([module])
    assert message in str(err.value)
