"""tools/batch_infer.py on a real local Ray (2 CPUs) over a real image folder with the real LeNet: the same records
as tools/infer.py, a corrupt image recorded as a failure, a run killed part-way then resumed with every image
exactly once, and a predictor actor killed mid-run replaced by Ray with no image lost. Speed is measured by the --vs-infer command, never asserted here."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="batch inference needs Ray: pip install -r requirements-ray.txt")

from conftest import ROOT, error_line, lenet_digit_job, run_tool  # noqa: E402
from deploy.batch_infer import STALE_GLOB, read_records, read_shard_paths, shard_paths  # noqa: E402

PER_CLASS = 12


@pytest.fixture(scope="module")
def job(lenet, tmp_path_factory):
    """A private model copy, its config, and a folder of 120 digits (a sub-folder per class) plus one corrupt PNG."""
    return lenet_digit_job(lenet, tmp_path_factory.mktemp("batch"), PER_CLASS, corrupt=True)


def infer_records(job):
    out = job["root"] / "infer.json"
    run_tool("infer", "-c", job["cfg"], "--image", job["images"], "--output", out, "--quiet", check=True)
    return {r["path"]: r for r in json.loads(out.read_text())["results"]}


def test_same_records_as_infer_and_failures_recorded(job):
    out = job["root"] / "two_workers"
    result = run_tool("batch_infer", "-c", job["cfg"], "--input", job["images"], "--output", out, "--workers", "2",
                      "--shard-size", "50", "--batch-size", "8", "--vs-infer", "--quiet", check=True)
    records = read_records(out)
    assert sorted(r["path"] for r in records) == job["paths"]  # every image exactly once
    failures = [r for r in records if "error" in r]
    assert [r["path"] for r in failures] == [str(job["images"] / "3" / "corrupt.png")]
    assert "cannot decode image" in failures[0]["error"]
    expected = infer_records(job)
    assert {r["path"]: r for r in records if "error" not in r} == expected
    assert all(r["label"] == int(r["path"].split("/")[-2]) for r in expected.values())
    assert len(shard_paths(out, "jsonl")) == 3 and not list(out.glob(STALE_GLOB))
    assert f"summary: {len(job['paths'])} images, 1 failures" in result.stdout
    # both actors took batches: each takes one batch of the first round, decoded before the stream starts
    assert sorted(int(n) >= 8 for n in re.findall(r"^  worker \S+: (\d+) images", result.stdout, re.M)) == [True] * 2
    assert f"identical records: {len(expected)}/{len(expected)}" in result.stdout


def test_killed_run_resumes_with_every_image_exactly_once(job):
    out = job["root"] / "resumed"
    cmd = [sys.executable, str(ROOT / "tools" / "batch_infer.py"), "-c", str(job["cfg"]), "--input",
           str(job["images"]), "--output", str(out), "--format", "parquet", "--shard-size", "8", "--batch-size", "4",
           "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and len(shard_paths(out, "parquet")) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    first = {p: p.read_bytes() for p in shard_paths(out, "parquet")}
    done_before = sum(len(read_shard_paths(p)) for p in first)
    assert first and done_before < len(job["paths"]), "the run was not interrupted part-way"

    again = run_tool("batch_infer", "-c", job["cfg"], "--input", job["images"], "--output", out, "--format",
                     "parquet")
    assert again.returncode == 2 and "pass --resume" in error_line(again)
    (out / ".part-half.parquet.x1y2.tmp").write_bytes(b"PAR1 half a shard")  # what a kill mid-write leaves
    resumed = run_tool("batch_infer", "-c", job["cfg"], "--input", job["images"], "--output", out, "--format",
                       "parquet", "--resume", "--quiet", check=True)
    assert f"{done_before} already done" in resumed.stdout
    records = read_records(out)
    assert sorted(r["path"] for r in records) == job["paths"]  # no duplicate, no missing image
    assert all(p.read_bytes() == data for p, data in first.items())  # finished shards are never rewritten
    assert not list(out.glob(STALE_GLOB))
    failures = [r for r in records if r.get("error") is not None]  # parquet: None where a shard has no such key
    assert [r["path"] for r in failures] == [str(job["images"] / "3" / "corrupt.png")]
    assert {r["path"]: {k: v for k, v in r.items() if v is not None} for r in records if r.get("error") is None} \
        == infer_records(job)


def test_bad_options_are_one_line_errors(job, tmp_path):
    bad = run_tool("batch_infer", "-c", job["cfg"], "--input", job["images"], "--output", tmp_path, "--workers", "0")
    assert bad.returncode == 2 and "--workers and --shard-size must be >= 1" in error_line(bad)
    missing = run_tool("batch_infer", "-c", job["cfg"], "--input", tmp_path / "nope", "--output", tmp_path / "o")
    assert missing.returncode == 2 and "nope" in error_line(missing)


def test_uri_sources_read_through_pyarrow_filesystems(job):
    """A list-file URI (file://, read with pyarrow's filesystem like s3:// or hdfs:// would be) with labels and
    relative paths: the images are read through the filesystem in the decode tasks, records keep the URIs."""
    listing = job["root"] / "list.txt"
    lines = [f"{p.relative_to(job['root'])}\t{p.parent.name}" for p in sorted(job["images"].rglob("*.png"))
             if p.name != "corrupt.png"]
    listing.write_text("\n".join(lines) + "\n")
    out = job["root"] / "uri"
    run_tool("batch_infer", "-c", job["cfg"], "--input", f"file://{listing}", "--output", out, "--quiet", check=True)
    records = read_records(out)
    assert sorted(r["path"] for r in records) == sorted(f"file://{p}" for p in job["paths"] if "corrupt" not in p)
    expected = infer_records(job)
    assert {r["path"][len("file://"):]: r | {"path": r["path"][len("file://"):]} for r in records} == expected
    missing = run_tool("batch_infer", "-c", job["cfg"], "--input", f"file://{job['root']}/nope", "--output",
                       job["root"] / "none")
    assert missing.returncode == 2 and "image source not found" in error_line(missing)


def _actor_pids(session: int) -> list[int]:
    """The pids of this run's predictor actors (Ray names their processes ray::MapWorker(...))."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ray::MapWorker" in (proc / "cmdline").read_bytes() \
                    and os.getsid(int(proc.name)) == session:
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_killed_worker_is_replaced_and_no_image_is_lost(job):
    out = job["root"] / "actor_killed"
    cmd = [sys.executable, str(ROOT / "tools" / "batch_infer.py"), "-c", str(job["cfg"]), "--input",
           str(job["images"]), "--output", str(out), "--batch-size", "1", "--shard-size", "5", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    killed = []
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not killed:
        if len(shard_paths(out, "jsonl")) >= 2:
            for pid in _actor_pids(proc.pid):
                os.kill(pid, signal.SIGKILL)  # the actor dies mid-run, with batches in flight
                killed.append(pid)
        time.sleep(0.02)
    stdout, _ = proc.communicate(timeout=300)
    assert killed, "no actor was running to kill"
    assert proc.returncode == 0
    records = read_records(out)
    assert sorted(r["path"] for r in records) == job["paths"]  # every image exactly once
    assert "summary: 121 images, 1 failures" in stdout
