"""Faults around INT8 installs: the toolkit replaces only folders it made, checks before the long work, finishes
an install a killed run left half-done, locks the manifest, and unwinds on SIGTERM (issue 15, items 1-3, 5, 6,
12, 13). Every test runs the real tools on the real LeNet model and checks what must survive by its hashes."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LENET_CONFIG, ROOT, error_line, run_tool, write_config
from deploy import cache
from deploy.engines.model import ModelFiles

QAT_CONFIG = ROOT / "configs" / "lenet_mnist_qat.yml"
FAST = ("--num-images", "100", "--algo", "avg", "--quiet")


def hashes(folder: Path) -> dict:
    """sha256 of every file under ``folder`` (what must survive, byte for byte)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Staging, old and journal files the toolkit leaves only while it works."""
    return sorted(p.name for p in folder.rglob(".*") if ".staging-" in p.name or ".old-" in p.name
                  or ".install-" in p.name)


def manifest_matches_artifacts(model_dir: Path, target: str = "cpu") -> bool:
    entry = json.loads((model_dir / "_opt_cache" / "calibration.json").read_text())["targets"][target]
    art = Path(entry["artifacts"]["dir"])
    return cache.artifact_fingerprint([art / name for name in entry["artifacts"]["files"]]) == \
        entry["artifacts"]["files"]


@pytest.fixture
def calibrated_copy(lenet_config, lenet_copy):
    """A private LeNet copy with one CPU calibration installed (100 images, avg: seconds)."""
    run_tool("calibrate", "-c", lenet_config, *FAST, check=True)
    return lenet_config, lenet_copy


# ---------------------------------------------------------------- 1, 2: only folders the toolkit made


def test_calibrate_output_dir_never_replaces_the_model_or_user_folders(lenet_config, lenet_copy, tmp_path):
    model_before = hashes(lenet_copy)
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    (user / "sub" / "data.bin").write_bytes(b"\x00" * 100)
    user_before = hashes(user)
    for target, says in ((lenet_copy, "holds"), (tmp_path, "holds"), (user, "did not create")):
        result = run_tool("calibrate", "-c", lenet_config, "--output-dir", target, *FAST)
        assert result.returncode == 2, result.stderr
        line = error_line(result)
        assert "--output-dir" in line and says in line, line
    # the same rule for calibration.output_dir in the config
    result = run_tool("calibrate", "-c", lenet_config, "-o", f"calibration.output_dir={user}", *FAST)
    assert result.returncode == 2 and "calibration.output_dir" in error_line(result)
    assert hashes(lenet_copy) == model_before
    assert hashes(user) == user_before


def test_calibrate_output_dir_new_empty_then_its_own_is_replaced(lenet_config, tmp_path):
    out = tmp_path / "int8"
    out.mkdir()  # an empty folder is fine
    run_tool("calibrate", "-c", lenet_config, "--output-dir", out, *FAST, check=True)
    assert (out / cache.OWNER_MARKER).is_file() and (out / "inference.pdmodel").is_file()
    first = hashes(out)
    run_tool("calibrate", "-c", lenet_config, "--output-dir", out, "--num-images", "60", "--algo", "avg",
             "--quiet", check=True)  # its own folder: replaced
    assert hashes(out) != first and not leftovers(tmp_path)
    result = run_tool("infer", "-c", lenet_config, "--precision", "int8", "--quiet")
    assert result.returncode == 0, result.stderr


def test_calibrate_output_checks_happen_before_the_work(lenet_config, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for target, says in ((a_file, "is a file"), (a_file / "under", "is a file, not a folder")):
        result = run_tool("calibrate", "-c", lenet_config, "--output-dir", target, "--num-images", "500")
        assert result.returncode == 2 and says in error_line(result)
        assert "calibration set" not in result.stderr  # refused up front: not one image was loaded
    assert a_file.read_text() == "x"


def test_qat_never_empties_an_existing_model_folder(lenet, lenet_copy, tmp_path):
    before = hashes(lenet_copy)
    (lenet_copy / "README.txt").write_text("my notes")
    cfg = write_config(tmp_path / "qat.yml", f"_base_: {QAT_CONFIG}\nmodel:\n  dir: {lenet_copy}\n"
                       f"qat:\n  train_images: {lenet / 'data' / 'calib'}\n  epochs: 1\n")
    result = run_tool("qat", "-c", cfg, "--quiet")
    assert result.returncode == 2, result.stderr
    assert "model.dir" in error_line(result) and "did not create" in error_line(result)
    assert hashes(lenet_copy) == {**before, "README.txt": hashes(lenet_copy)["README.txt"]}
    assert (lenet_copy / "README.txt").read_text() == "my notes"


# ---------------------------------------------------------------- 3: check first, swap last


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"format": 1, "targets": {"cpu": 3}}',
                                  '{"format": 1, "targets": {"cpu": {"model": {}}}}'])
def test_corrupt_manifest_fails_before_the_work_and_replaces_nothing(calibrated_copy, text):
    cfg, model = calibrated_copy
    (model / "_opt_cache" / "calibration.json").write_text(text)
    before = hashes(model)
    result = run_tool("calibrate", "-c", cfg, "--num-images", "100", "--algo", "KL")  # KL: minutes if it ran
    assert result.returncode == 2 and "calibration.json" in error_line(result)
    assert "calibration set" not in result.stderr  # no image was loaded
    assert hashes(model) == before
    result = run_tool("infer", "-c", cfg, "--precision", "int8")
    assert result.returncode == 2 and "calibration.json" in error_line(result)


def test_bad_counts_and_skip_tensors_are_one_line_errors(lenet_config):
    for value in ("0", "-3"):
        result = run_tool("calibrate", "-c", lenet_config, "--num-images", value)
        assert result.returncode == 2 and "--num-images" in error_line(result)
    result = run_tool("calibrate", "-c", lenet_config, "-o", "calibration.skip_tensors=[conv2d_2.w_0, bogus]")
    line = error_line(result)
    assert result.returncode == 2 and "'bogus'" in line and "inspect_model.py" in line


# ---------------------------------------------------------------- 5: a kill inside the install


KILLER = """
import os, signal, sys
sys.argv = ["calibrate.py", *sys.argv[1:]]
sys.path.insert(0, {tools!r})
real_replace, calls = os.replace, []

def replace_then_die(src, dst):
    real_replace(src, dst)
    if os.path.basename(str(dst)).startswith((".int8_cpu.old", "int8_cpu")):
        calls.append(dst)
        if len(calls) == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace_then_die
import calibrate
from deploy.cli import run_tool
run_tool(calibrate.main)
"""


@pytest.mark.parametrize("kill_after", [1, 2], ids=["after-old-moved-away", "after-new-moved-in"])
def test_a_kill_inside_the_install_is_finished_by_the_next_run(calibrated_copy, tmp_path, kill_after):
    cfg, model = calibrated_copy
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(tools=str(ROOT / "tools"), kill_after=kill_after))
    result = subprocess.run([sys.executable, str(script), "-c", str(cfg), "--num-images", "60", "--algo", "avg",
                             "--quiet"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert leftovers(model)  # killed half-way: the journal is there
    # The next run (any INT8 run) finishes the install: the new model, the manifest matching it, no leftovers.
    result = run_tool("infer", "-c", cfg, "--precision", "int8")
    assert result.returncode == 0, result.stderr
    assert manifest_matches_artifacts(model)
    entry = json.loads((model / "_opt_cache" / "calibration.json").read_text())["targets"]["cpu"]
    assert entry["num_images"] == 60
    assert not leftovers(model)


def _start_and_wait_for_staging(cfg, model_dir, *extra):
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "calibrate.py"), "-c", str(cfg), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 300
    while not list((model_dir / "_opt_cache").glob(".int8_cpu.staging-*")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(1.0)  # inside PaddleSlim's quantization loop
    return proc


def test_sigterm_unwinds_and_sigkill_leftovers_are_cleaned(calibrated_copy):
    cfg, model = calibrated_copy
    before = hashes(model)
    proc = _start_and_wait_for_staging(cfg, model, "--algo", "KL", "--num-images", "500")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "FatalError" not in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == \
        ["error: terminated (signal 15); artifacts from earlier runs are untouched"]
    assert hashes(model) == before and not leftovers(model)

    proc = _start_and_wait_for_staging(cfg, model, "--algo", "KL", "--num-images", "500")
    proc.kill()
    proc.communicate(timeout=60)
    assert leftovers(model)  # a dead run's staging folder
    assert {k: v for k, v in hashes(model).items() if ".staging-" not in k} == before
    run_tool("calibrate", "-c", cfg, *FAST, check=True)
    assert not leftovers(model) and manifest_matches_artifacts(model)


# ---------------------------------------------------------------- 6: the manifest lock


WRITER = """
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from deploy import cache
from deploy.engines.model import ModelFiles
files = ModelFiles(Path({program!r}), Path({params!r}))
entry = {{"model": cache.model_fingerprint(files), "artifacts": {{"dir": "x", "files": {{}}}}}}
for i in range({count}):
    cache.write_manifest_entry(files, f"{prefix}{{i}}", entry)
"""


def test_concurrent_manifest_updates_keep_every_entry(lenet_copy, tmp_path):
    files = ModelFiles(lenet_copy / "inference.pdmodel", lenet_copy / "inference.pdiparams")
    procs = []
    for prefix in ("a", "b"):
        script = tmp_path / f"writer_{prefix}.py"
        script.write_text(WRITER.format(root=str(ROOT), program=str(files.program), params=str(files.params),
                                        count=150, prefix=prefix))
        procs.append(subprocess.Popen([sys.executable, str(script)]))
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    targets = json.loads(cache.manifest_path(files).read_text())["targets"]
    assert set(targets) == {f"{p}{i}" for p in "ab" for i in range(150)}


# ---------------------------------------------------------------- a full or read-only disk


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs (needs root, as CI runs)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_and_read_only_disks_fail_before_the_work_with_one_line(lenet_config, small_fs):
    (small_fs / "filler").write_bytes(b"\x00" * ((2 << 20) - 8192))  # 8 KiB left: LeNet's INT8 model needs more
    result = run_tool("calibrate", "-c", lenet_config, "--output-dir", small_fs / "int8", *FAST)
    assert result.returncode == 2 and "no space" in error_line(result)
    (small_fs / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    result = run_tool("calibrate", "-c", lenet_config, "--output-dir", small_fs / "int8", *FAST)
    assert result.returncode == 2 and "read-only" in error_line(result)
    result = run_tool("eval", "-c", lenet_config, "--precisions", "fp32", "--output-dir", small_fs / "report")
    assert result.returncode == 2 and "--output-dir" in error_line(result) and "read-only" in error_line(result)


def test_report_output_dir_is_checked_before_the_evaluation(lenet_config, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for target in (a_file, a_file / "report"):
        result = run_tool("eval", "-c", lenet_config, "--precisions", "fp32", "--output-dir", target)
        assert result.returncode == 2 and "--output-dir" in error_line(result)
        assert "top-1" not in result.stdout  # nothing was evaluated
    assert a_file.read_text() == "x"
