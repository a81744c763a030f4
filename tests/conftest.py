"""Shared fixtures: the real LeNet demo model (built once), scratch configs, and running tools as a user would."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLAGS_enable_pir_api", "0")

LENET_DIR = ROOT / "models" / "lenet_mnist"
LENET_CONFIG = ROOT / "configs" / "lenet_mnist.yml"


@pytest.fixture(scope="session")
def lenet() -> Path:
    """The demo model dir (models/lenet_mnist), built by its own script when missing."""
    if not (LENET_DIR / "inference" / ".complete").is_file() or not (LENET_DIR / "data" / ".complete").is_file():
        subprocess.run([sys.executable, str(LENET_DIR / "build.py"), "--quiet"], check=True)
    return LENET_DIR


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def lenet_copy(lenet, tmp_path) -> Path:
    """A private copy of the demo inference model, for tests that write caches or change files."""
    dst = tmp_path / "lenet_model"
    # Without the demo's own _opt_cache: a calibration made there must not leak into the copy.
    shutil.copytree(lenet / "inference", dst, ignore=shutil.ignore_patterns("_opt_cache"))
    return dst


@pytest.fixture
def lenet_config(lenet_copy, tmp_path) -> Path:
    """A config that inherits configs/lenet_mnist.yml but points at the private model copy."""
    return write_config(tmp_path / "cfg" / "lenet.yml",
                        f"_base_: {LENET_CONFIG}\nmodel:\n  dir: {lenet_copy}\n  build: null\n")


def lenet_digit_job(lenet: Path, root: Path, per_class: int = 12, corrupt: bool = False) -> dict:
    """A private LeNet copy under ``root``, its config, and ``per_class`` test digits per class (a sub-folder per
    class), plus one corrupt PNG when asked: what the batch-inference tests run on."""
    shutil.copytree(lenet / "inference", root / "model", ignore=shutil.ignore_patterns("_opt_cache"))
    cfg = write_config(root / "lenet.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  dir: {root / 'model'}\n  build: null\n")
    images = root / "images"
    for digit in range(10):
        (images / str(digit)).mkdir(parents=True)
        for path in sorted((lenet / "data" / "test" / str(digit)).glob("*.png"))[:per_class]:
            shutil.copy(path, images / str(digit) / path.name)
    if corrupt:
        (images / "3" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"root": root, "cfg": cfg, "images": images, "paths": sorted(str(p) for p in images.rglob("*.png"))}


def run_tool(tool: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run tools/<tool>.py in a subprocess exactly as a user would."""
    result = subprocess.run([sys.executable, str(ROOT / "tools" / f"{tool}.py"), *map(str, args)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} {args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one 'error: ...' line a failing tool prints (asserting there is no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]
