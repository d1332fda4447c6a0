"""quakescan installs as ``quakescan.detector`` / ``quakescan.training`` / ``quakescan.serving``.

A working directory with its own ``detector/``, ``training/`` or ``serving/``
folder (common in ML repositories) must not shadow quakescan, whether it was
installed editable (this checkout) or from a built wheel. And the runtime
(``quakescan.detector`` and the worker's task module) never imports torch.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import quakescan.detector, quakescan.serving, quakescan.training
import quakescan.serving.tasks
from quakescan.detector import Detector
print(json.dumps({
    "detector": quakescan.detector.__file__,
    "serving": quakescan.serving.__file__,
    "training": quakescan.training.__file__,
    "torch": "torch" in sys.modules,
    "n_models": len(list(__import__("quakescan.detector.model", fromlist=["x"]).shipped_models())),
}))
"""


def _decoy(cwd: Path) -> None:
    """Unrelated top-level packages named like quakescan's folders."""
    for name in ("detector", "training", "serving"):
        (cwd / name).mkdir()
        (cwd / name / "__init__.py").write_text(f"raise ImportError('decoy {name} imported')\n")


def _probe(python: str, cwd: Path, env_path: str | None = None) -> dict:
    import json
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if env_path:
        env["PYTHONPATH"] = env_path
    out = subprocess.run(
        [python, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_editable_install_is_not_shadowed_by_local_folders(tmp_path):
    _decoy(tmp_path)
    got = _probe(sys.executable, tmp_path)
    assert Path(got["detector"]).parent == ROOT / "detector"
    assert Path(got["serving"]).parent == ROOT / "serving"
    assert Path(got["training"]).parent == ROOT / "training"
    assert got["n_models"] >= 1
    # the runtime and the worker's tasks never pull in torch
    assert got["torch"] is False


@pytest.mark.slow
def test_built_wheel_installs_under_quakescan_and_is_not_shadowed(tmp_path):
    # Build from a copy: setuptools writes build/ and *.egg-info into the source tree.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT, src,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "runs", "catalogs", "*.egg-info",
                                      "__pycache__", ".pytest_cache", ".ruff_cache"),
    )  # fmt: skip
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (whl,) = wheels.glob("quakescan-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    # everything under quakescan/, nothing at the top level of site-packages
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"quakescan"}, tops
    assert "quakescan/__init__.py" not in names  # a namespace package
    assert "quakescan/detector/models/convnetquake.onnx" in names
    assert any(n.startswith("quakescan/detector/data/sample/") for n in names)

    target = tmp_path / "site"
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(whl)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert inst.returncode == 0, inst.stderr[-2000:]
    cwd = tmp_path / "work"
    cwd.mkdir()
    _decoy(cwd)
    # isolated from the editable install: -S would drop site-packages deps, so put the
    # wheel's folder first on the path; its quakescan must win over the editable finder.
    got = _probe(sys.executable, cwd, env_path=str(target))
    assert Path(got["detector"]).is_relative_to(target), got
    assert got["torch"] is False
