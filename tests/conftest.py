import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def kdbench_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600,
                check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m kdbench`` in a subprocess (isolated registries, real process)."""
    full_env = {**os.environ, "PYTHONPATH": str(TESTS / "toy_plugins"), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "kdbench", *args],
                          cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kdbench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return kdbench_cli


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    """Decoded-image caches and data roots of tests never touch the user's home."""
    saved = {k: os.environ.get(k) for k in ("KDBENCH_CACHE", "KDBENCH_DATA")}
    os.environ["KDBENCH_CACHE"] = str(tmp_path_factory.mktemp("kdbench-cache"))
    os.environ["KDBENCH_DATA"] = str(tmp_path_factory.mktemp("kdbench-data"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
