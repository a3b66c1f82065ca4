"""The README's worked plugin example is real: extracted from README.md, imported with
``--import`` and run against KD on digits."""
import re
from pathlib import Path

from conftest import kdbench_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_plugin_example_runs_against_kd(tmp_path):
    blocks = re.findall(r"```python\n(# mypkg/annealed_kd\.py\n.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README's worked example (mypkg/annealed_kd.py) is missing"
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "annealed_kd.py").write_text(blocks[0])
    out = tmp_path / "out"
    proc = kdbench_cli("run", "--import", "mypkg.annealed_kd", "--methods", "annealed_kd", "--dataset", "digits",
                       "--pairs", "resnet8->resnet8", "--seeds", "1", "--epochs", "1", "--teacher-epochs", "1",
                       "--batch-size", "128", "--no-progress", "--set", "annealed_kd.t_end=2", "--out", str(out),
                       env={"PYTHONPATH": f"{tmp_path}"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^annealed_kd\s", proc.stdout, re.M), proc.stdout
    listed = kdbench_cli("--import", "mypkg.annealed_kd", "list", "methods", env={"PYTHONPATH": f"{tmp_path}"})
    assert "annealed_kd" in listed.stdout and "t_start=8.0" in listed.stdout, listed.stdout + listed.stderr
