"""Faults of tools/batch_infer.py (issue 15) on a real local Ray with the real LeNet and real digits: --resume with
another config, model or precision; a damaged shard; an --address nobody answers; an --output that cannot be
written; a driver killed with SIGKILL or stopped with SIGTERM or SIGINT. Every refusal is one line and happens
before Ray starts; the shards already written survive byte for byte."""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="batch inference needs Ray: pip install -r requirements-ray.txt")

from conftest import ROOT, error_line, lenet_digit_job, run_tool, write_config  # noqa: E402
from deploy.batch_infer import RUN_RECORD, STALE_GLOB, read_records, read_shard, shard_paths, write_shard  # noqa: E402

PER_CLASS = 12


@pytest.fixture(scope="module")
def job(lenet, tmp_path_factory):
    """A private model copy, its config, and 120 digits (a sub-folder per class)."""
    return lenet_digit_job(lenet, tmp_path_factory.mktemp("batch_faults"), PER_CLASS)


@pytest.fixture(scope="module")
def finished(job):
    """One finished run (jsonl, 3 shards) that the refusals below must leave untouched."""
    out = job["root"] / "finished"
    run_tool("batch_infer", "-c", job["cfg"], "--input", job["images"], "--output", out, "--shard-size", "50",
             "--quiet", check=True)
    return out


def digests(folder: Path) -> dict[str, str]:
    """sha256 of the finished shards and the run record (not of a temporary file a SIGKILL left mid-write)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def batch_infer(job, out, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "tools" / "batch_infer.py"), "-c", str(job["cfg"]), "--input",
           str(job["images"]), "--output", str(out), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- item 4: --resume checks what made the shards


def test_resume_refuses_shards_of_another_config_model_or_precision(job, finished, tmp_path):
    before = digests(finished)
    other_model = tmp_path / "model"
    shutil.copytree(job["root"] / "model", other_model)
    params = bytearray((other_model / "inference.pdiparams").read_bytes())
    params[-100] ^= 0x01  # one weight changed: another model that loads and runs
    (other_model / "inference.pdiparams").write_bytes(bytes(params))
    other_cfg = write_config(tmp_path / "other.yml", f"_base_: {job['cfg']}\nmodel:\n  dir: {other_model}\n")
    cases = [(["-o", "postprocess.topk=1"], "config postprocess differs"),
             (["--precision", "bf16"], "precision fp32 there, bf16 now"),
             (["-c", other_cfg], "model params sha256")]
    for args, what in cases:
        result = batch_infer(job, finished, "--resume", *args)
        line = error_line(result)
        assert result.returncode == 2 and what in line, line
        assert f"the 3 shards in {finished} come from another run" in line
        assert "resume with that config, model and precision, or write to another --output" in line
    assert digests(finished) == before and RUN_RECORD in before  # nothing rewritten, nothing added

    # the same typed config from another YAML file, with speed-only changes: resumes (nothing left, no Ray)
    same = write_config(tmp_path / "same.yml", f"# a copy\n_base_: {job['cfg']}\nruntime:\n  batch_size: 4\n")
    resumed = batch_infer(job, finished, "-c", same, "--resume", "--workers", "2", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(job['paths'])} already done; 0 shards written" in resumed.stdout
    again = batch_infer(job, finished)
    assert again.returncode == 2 and "already holds 3 result shards; pass --resume" in error_line(again)

    legacy = tmp_path / "legacy"  # shards of a batch_infer that wrote no identity record
    shutil.copytree(finished, legacy)
    (legacy / RUN_RECORD).unlink()
    old = batch_infer(job, legacy, "--resume")
    assert old.returncode == 2 and f"no {RUN_RECORD} saying which config, model and precision made them" \
        in error_line(old)
    assert digests(finished) == before


def test_damaged_shard_is_one_line_naming_it(job, finished, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(finished, cut)
    shard = shard_paths(cut, "jsonl")[-1]
    shard.write_bytes(shard.read_bytes()[:-25])  # the last line cut mid-record (a full disk, an edit)
    result = batch_infer(job, cut, "--resume")
    line = error_line(result)
    assert result.returncode == 2 and f"result shard {shard} is damaged (line" in line
    assert "delete it and rerun with --resume" in line

    parquet = tmp_path / "parquet"
    parquet.mkdir()
    shutil.copy(finished / RUN_RECORD, parquet / RUN_RECORD)
    write_shard(parquet, "a-000000", "parquet", read_shard(shard_paths(finished, "jsonl")[0]))
    (parquet / "part-a-000001.parquet").write_bytes(b"PAR1 not a parquet file")
    result = batch_infer(job, parquet, "--resume", "--format", "parquet")
    line = error_line(result)
    assert result.returncode == 2 and "part-a-000001.parquet is damaged (not a readable parquet file" in line
    assert "delete it and rerun with --resume" in line


# ---------------------------------------------------------------- refusals before Ray starts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_address_fails_in_seconds(job, tmp_path):
    port = free_port()
    for address, env in [(f"127.0.0.1:{port}", None), (f"ray://127.0.0.1:{port}", None),
                         ("auto", {"RAY_ADDRESS": f"127.0.0.1:{port}"})]:
        start = time.monotonic()
        result = batch_infer(job, tmp_path / "out", "--address", address, env=env, timeout=90)
        line = error_line(result)
        assert result.returncode == 2 and f":{port} (Connection refused within 5 s)" in line, line
        assert "start the cluster there (ray start --head) or fix --address" in line
        assert time.monotonic() - start < 30
    assert not (tmp_path / "out").exists()


def ray_sessions(pid: int) -> list[Path]:
    """The session folder(s) of the local Ray a driver with this pid started (Ray names them after it)."""
    return list(Path("/tmp/ray").glob(f"session_*_{pid}"))


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_unwritable_output_fails_before_ray(job, tmp_path, where):
    if where == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    out = {"a file": blocker, "under a file": blocker / "out", "read-only": tmp_path / "ro" / "out"}[where]
    if where == "read-only":
        out.parent.mkdir()
        out.parent.chmod(0o555)
    cmd = [sys.executable, str(ROOT / "tools" / "batch_infer.py"), "-c", str(job["cfg"]), "--input",
           str(job["images"]), "--output", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    line = error_line(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    assert proc.returncode == 2 and line.startswith("error: --output") and str(out) in line, line
    assert not ray_sessions(proc.pid)  # refused before Ray started
    assert blocker.read_text() == "not a folder"


# ---------------------------------------------------------------- item 14: a killed driver leaves no Ray behind


def process_table() -> dict[int, tuple[int, bytes, bytes]]:
    """pid -> (parent pid, start time, state) of every process."""
    rows = {}
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            rows[int(entry.name)] = (int(fields[1]), fields[19], fields[0])
        except (OSError, ValueError, IndexError):
            continue
    return rows


def descendants(root: int) -> dict[int, bytes]:
    """pid -> start time of every process whose parent chain leads to ``root``."""
    rows = process_table()
    found, todo = {}, [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, start, _) in rows.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


def survivors(known: dict[int, bytes], session: Path) -> list[str]:
    """The processes of that run still running: known descendants (same start time, not a zombie) and any
    process whose command line names the run's Ray session folder."""
    rows = process_table()
    left = [pid for pid, start in known.items() if pid in rows and rows[pid][1] == start and rows[pid][2] != b"Z"]
    for pid in rows:
        try:
            if str(session).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(pid)
        except OSError:
            continue
    names = []
    for pid in sorted(set(left)):
        try:
            names.append(f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes().rstrip(bytes(1))[:80]!r}")
        except OSError:
            continue
    return names


def wait_until_gone(known: dict[int, bytes], session: Path, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := survivors(known, session)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


def start_until_a_new_shard(job, out, stderr: Path, *extra) -> tuple[subprocess.Popen, dict[int, bytes], Path]:
    """Start a slow run (a batch of 1, shards of 5); return once it wrote a shard, with its processes and session.
    (stderr goes to a file: a pipe would stay open as long as any Ray process that inherited it.)"""
    had = len(shard_paths(out, "jsonl")) if out.exists() else 0
    cmd = [sys.executable, str(ROOT / "tools" / "batch_infer.py"), "-c", str(job["cfg"]), "--input",
           str(job["images"]), "--output", str(out), "--batch-size", "1", "--shard-size", "5", "--quiet", *extra]
    with stderr.open("w") as err:  # SIGINT as a terminal gives it, even when pytest itself was started in the
        # background by a script (which ignores SIGINT, and a child keeps that: the run would finish, exit 0)
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and len(shard_paths(out, "jsonl")) <= had:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    sessions = ray_sessions(proc.pid)
    assert len(sessions) == 1, sessions
    return proc, descendants(proc.pid), sessions[0]


def kill_leftovers(known: dict[int, bytes]) -> None:
    """Only for a failing run: stop what this test started, so it does not leak into other tests."""
    rows = process_table()
    for pid, start in known.items():
        if pid in rows and rows[pid][1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_killed_terminated_or_interrupted_driver_leaves_no_ray_and_resume_writes_every_image_once(job):
    out, stderr = job["root"] / "killed", job["root"] / "killed.stderr"
    proc, known, session = start_until_a_new_shard(job, out, stderr)
    try:
        assert any(b"raylet" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in known if
                   Path(f"/proc/{pid}").exists()), "no local Ray was running"
        proc.kill()  # SIGKILL on the driver alone: no handler, no atexit
        proc.wait(timeout=60)
        left = wait_until_gone(known, session, 20)
        assert not left, f"the local Ray outlived its killed driver: {left}"
    finally:
        kill_leftovers(known)

    for sig, code, how in [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted (SIGINT)")]:
        before = digests(out)
        proc, known, session = start_until_a_new_shard(job, out, stderr, "--resume")
        try:
            proc.send_signal(sig)
            proc.wait(timeout=120)
            assert proc.returncode == code, stderr.read_text()
            line = error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr.read_text()))
            assert line == f"error: {how}; the finished shards in {out} are kept: rerun with --resume to finish"
            left = wait_until_gone(known, session, 5)
            assert not left, f"the local Ray outlived its {how} driver: {left}"
        finally:
            kill_leftovers(known)
        assert not list(out.glob(STALE_GLOB))  # no half-written shard
        after = digests(out)
        assert {name: after[name] for name in before} == before and len(after) > len(before)

    done = sum(len(read_shard(p)) for p in shard_paths(out, "jsonl"))
    resumed = run_tool("batch_infer", "-c", job["cfg"], "--input", job["images"], "--output", out, "--resume",
                       "--quiet", check=True)
    assert f"{done} already done" in resumed.stdout
    assert sorted(r["path"] for r in read_records(out)) == job["paths"]  # every image exactly once
    assert {name: digest for name, digest in digests(out).items() if name in after} == after
    assert json.loads((out / RUN_RECORD).read_text())["precision"] == "fp32"
