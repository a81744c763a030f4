"""The one cache writer: atomic file writes, the calibration provenance manifest and its checks, the engine-cache
guard. (Which INT8 artifact a run uses is decided in engines/plan.py, from this manifest.)

Paddle-TRT's own cache keys hash tensor names, batch size and precision, not the weights, so a retrained
model would silently reuse a stale table. Ours record sha256 of the model files, the preprocess ops and the
calibration image list, and every INT8 run checks them before trusting an artifact.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from deploy.config.loader import DeployConfig
from deploy.data.pipeline import ops_fingerprint
from deploy.engines.model import ModelFiles
from deploy.errors import CalibrationError, OutputError


log = logging.getLogger(__name__)

MANIFEST_NAME = "calibration.json"
MANIFEST_FORMAT = 1
TRT_TABLE_PREFIX = "trt_calib_"
# Paddle-TRT (use_static=True) serializes each engine to <optim cache dir>/trt_serialized_<engine key>.
TRT_ENGINE_PREFIX = "trt_serialized_"
ENGINE_MANIFEST_NAME = "engine_manifest.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_failure(path: Path, e: OSError) -> OutputError:
    """The one-line error for an OSError while writing ``path`` (no space, read-only, permission...)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"no space left on the device of {path}: free some space or write elsewhere")
    if e.errno == errno.EROFS:
        return OutputError(f"cannot write {path}: the filesystem is read-only; write elsewhere")
    return OutputError(f"cannot write {path}: {e.strerror or e}; choose a writable path")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a temp file in the same directory + rename: readers never see half a file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are as readable as any file
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_failure(path, e) from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    """Atomically write indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


MIN_FREE_BYTES = 1 << 20  # an output check fails below this much free space


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_can_create_in(folder: Path, target: Path, need_bytes: int) -> None:
    """A file can be created in ``folder`` (probe: create and delete one) and its filesystem has room."""
    if not folder.is_dir():
        raise OutputError(f"cannot write {target}: {folder} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        stats = os.statvfs(folder)
    except OSError as e:
        raise write_failure(target, e) from e
    free = stats.f_bavail * stats.f_frsize
    if free < max(need_bytes, MIN_FREE_BYTES):
        raise OutputError(f"no space left on the device of {target} ({free >> 20} MiB free, "
                          f"{max(need_bytes, MIN_FREE_BYTES) >> 20} MiB needed): free some space or write elsewhere")


def check_output_file(path: Path, option: str, need_bytes: int = 0) -> None:
    """Before a run: ``path`` (from ``option``) can be written as a file. Raises OutputError naming the option
    when it is a folder, lies under a file, or its filesystem is read-only or full."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file path")
    try:
        _check_can_create_in(_existing_ancestor(path.parent), path, need_bytes)
    except OutputError as e:
        raise OutputError(f"{option}: {e}") from e


def check_output_dir(path: Path, option: str, need_bytes: int = 0) -> None:
    """Before a run: files can be written inside the folder ``path`` (from ``option``), created if missing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder; give a folder path")
    try:
        _check_can_create_in(_existing_ancestor(path), path, need_bytes)
    except OutputError as e:
        raise OutputError(f"{option}: {e}") from e


# ---------------------------------------------------------------- installs: only ever replace our own folders

OWNER_MARKER = ".paddle-deploy.json"  # in every folder the toolkit installs: it may replace that folder later
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:staging|old)-(?P<pid>\d+)(?:-.*)?$")
_held_locks: dict[Path, int] = {}
_journaled: set[Path] = set()  # staged paths an unfinished install journal of this process refers to


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """An exclusive fcntl lock on ``lock_file`` (created if missing), re-entrant within the process: one manifest
    update or install at a time, across processes. The kernel drops it when the process dies."""
    lock_file = Path(os.path.abspath(lock_file))
    if lock_file in _held_locks:
        _held_locks[lock_file] += 1
        try:
            yield
        finally:
            _held_locks[lock_file] -= 1
        return
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as e:
        raise write_failure(lock_file, e) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held_locks[lock_file] = 1
        try:
            yield
        finally:
            del _held_locks[lock_file]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_dir(final: Path) -> Path:
    """A fresh scratch directory beside ``final`` (same filesystem, so the final rename is atomic), named with our
    pid so a later run can tell a dead run's leftovers from a live one's."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-{os.getpid()}-", dir=final.parent))
        os.chmod(staged, 0o777 & ~_umask())
    except OSError as e:
        raise write_failure(final, e) from e
    return staged


@contextlib.contextmanager
def staged_dir(final: Path, kind: str) -> Iterator[Path]:
    """A scratch dir beside ``final``, marked as made by the toolkit (``kind``: what it holds); removed when the
    block fails. Install it with ``install``."""
    staged = staging_dir(final)
    try:
        atomic_write_json(staged / OWNER_MARKER, {"created_by": "paddle-deploy", "kind": kind, "created": _now()})
        yield staged
    except BaseException:
        if staged not in _journaled:  # a failed install's journal still needs it: the next run finishes it
            shutil.rmtree(staged, ignore_errors=True)
        raise


def stage_file(final: Path, data: bytes) -> Path:
    """``data`` written to a staging file beside ``final`` (same filesystem), for ``install``."""
    try:
        fd, staged = tempfile.mkstemp(prefix=f".{final.name}.staging-{os.getpid()}-", dir=final.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(staged, 0o666 & ~_umask())
    except OSError as e:
        raise write_failure(final, e) from e
    return Path(staged)


def _ours(folder: Path, legacy: Sequence[str]) -> bool:
    """Made by the toolkit: it holds our marker, or (from before the marker) only the files ``legacy`` names,
    among them the first (the provenance file that only we write)."""
    names = {p.name for p in folder.iterdir()}
    return OWNER_MARKER in names or (bool(legacy) and legacy[0] in names and names <= set(legacy))


def check_replaceable(final: Path, option: str, *, keep: Sequence[Path] = (), legacy: Sequence[str] = (),
                      need_bytes: int = 0) -> None:
    """Before the work: an install may put a folder at ``final`` (from ``option``). It may replace only a folder
    the toolkit made (or an empty one), and never one that holds any of ``keep`` (the model, the user's data)."""
    final = Path(os.path.abspath(final))
    for path in keep:
        path = Path(os.path.abspath(path))
        if path == final or final in path.parents:
            raise OutputError(f"{option} {final} holds {path}, which the install would replace; choose a new or "
                              "empty folder")
    if not final.exists():
        check_output_dir(final.parent, option, need_bytes)
        return
    if not final.is_dir():
        raise OutputError(f"{option} {final} is a file; choose a new or empty folder")
    if any(final.iterdir()) and not _ours(final, legacy):
        raise OutputError(f"{option} {final} already holds files this toolkit did not create (no {OWNER_MARKER}); "
                          "it replaces only its own folders: choose a new or empty folder")
    check_output_dir(final, option, need_bytes)


def _journals(anchor: Path) -> list[Path]:
    return sorted(anchor.parent.glob(f".{anchor.name}.install-*.json"))


def install(anchor: Path, moves: Sequence[tuple[Path, Path]], manifest_entry: Optional[tuple[str, dict]] = None,
            ) -> None:
    """Move each staged path onto its final path (a folder or a file), then record ``manifest_entry`` (target,
    entry) in the manifest ``anchor`` when given; under ``anchor``'s lock.

    A journal written first lists every step, so a run killed half-way is finished by the next one that locks
    ``anchor`` (``recover``): the previous artifacts are never lost and never left mismatching the manifest."""
    anchor = Path(os.path.abspath(anchor))
    steps = [[str(s), str(f), str(f.with_name(f".{f.name}.old-{os.getpid()}"))] for s, f in moves]
    journal = {"pid": os.getpid(), "created": _now(), "moves": steps,
               "manifest": list(manifest_entry) if manifest_entry else None}
    staged = {Path(s) for s, _ in moves}
    # SIGINT/SIGTERM wait until the install is done (milliseconds); SIGKILL leaves the journal for the next run.
    with locked(_lock_file(anchor)), _signals_deferred():
        path = anchor.with_name(f".{anchor.name}.install-{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        atomic_write_json(path, journal)
        _journaled.update(staged)
        _finish(anchor, journal)
        path.unlink()
        _journaled.difference_update(staged)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    deferred = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _finish(anchor: Path, journal: dict) -> None:
    """Do the steps of an install journal that are not done yet (each step is idempotent)."""
    for staged, final, old in (map(Path, step) for step in journal["moves"]):
        if staged.exists():
            if final.exists() and not old.exists():
                os.replace(final, old)
            os.replace(staged, final)
    if journal["manifest"]:
        target, entry = journal["manifest"]
        _write_entry(anchor, target, entry)
    for _, _, old in journal["moves"]:
        _remove(Path(old))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _lock_file(anchor: Path) -> Path:
    return anchor.with_name(f".{anchor.name}.lock")


def recover(anchor: Path) -> None:
    """Finish installs into ``anchor``'s folder that a killed run left half-done, then remove the staging and old
    folders of dead runs beside the finals they were for. Cheap when there is nothing to do."""
    anchor = Path(os.path.abspath(anchor))
    journals = _journals(anchor)
    if journals:
        with locked(_lock_file(anchor)):
            for path in _journals(anchor):
                try:
                    journal = json.loads(path.read_text())
                    _finish(anchor, journal)
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise CalibrationError(f"cannot finish the interrupted install recorded in {path}: {e}; "
                                           "remove it and rerun") from e
                log.warning("finished an install that a killed run (pid %s, %s) left half-done", journal["pid"],
                            journal["created"])
                path.unlink()


def remove_dead_leftovers(folder: Path, name: str) -> list[Path]:
    """The staging and old folders (and files) for ``name`` that runs which have died left in ``folder``, removed.
    Only names the toolkit makes (``.<name>.staging-<pid>-*``, ``.<name>.old-<pid>``) of dead pids are touched;
    call it after ``recover``, which may still need them."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _LEFTOVER.match(path.name)
        if match and match["name"] == name and int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"])):
            _remove(path)
            removed.append(path)
    if removed:
        log.info("removed %d leftover(s) of killed runs in %s", len(removed), folder)
    return removed


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of a string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def opt_cache_dir(files: ModelFiles) -> Path:
    """``<model dir>/_opt_cache``: where Paddle writes tables and engines, and where our manifest lives."""
    return files.dir / "_opt_cache"


def model_fingerprint(files: ModelFiles) -> dict[str, str]:
    """sha256 of the program and params files."""
    return {"program": str(files.program), "program_sha256": sha256_file(files.program),
            "params_sha256": sha256_file(files.params)}


def artifact_fingerprint(paths: list[Path]) -> dict[str, str]:
    """sha256 of every artifact file, by name."""
    return {p.name: sha256_file(p) for p in sorted(paths)}


def manifest_path(files: ModelFiles) -> Path:
    """``<model dir>/_opt_cache/calibration.json``."""
    return opt_cache_dir(files) / MANIFEST_NAME


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _manifest_problem(data: Any) -> Optional[str]:
    """What is wrong with the shape of a manifest (None when it is one)."""
    if not isinstance(data, dict) or not isinstance(data.get("targets"), dict):
        return "expected an object with 'format' and 'targets'"
    if data.get("format") != MANIFEST_FORMAT:
        return f"format {data.get('format')!r}, expected {MANIFEST_FORMAT}"
    for target, entry in data["targets"].items():
        model = entry.get("model") if isinstance(entry, dict) else None
        artifacts = entry.get("artifacts") if isinstance(entry, dict) else None
        if not (isinstance(model, dict) and all(isinstance(model.get(k), str)
                                                for k in ("program_sha256", "params_sha256"))):
            return f"target '{target}' has no model fingerprint"
        if not (isinstance(artifacts, dict) and isinstance(artifacts.get("dir"), str)
                and isinstance(artifacts.get("files"), dict)):
            return f"target '{target}' has no artifact list"
    return None


def _read_manifest_file(path: Path) -> dict:
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "targets": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{path} is not readable JSON ({e}); delete it and rerun tools/calibrate.py") from e
    problem = _manifest_problem(data)
    if problem:
        raise CalibrationError(f"{path} is not a calibration manifest ({problem}); delete it and rerun "
                               "tools/calibrate.py")
    return data


def read_manifest(files: ModelFiles) -> dict:
    """The manifest beside the model (an empty one when there is none), after finishing an install a killed run
    left half-done. CalibrationError when it is unreadable or not a manifest."""
    path = manifest_path(files)
    recover(path)
    return _read_manifest_file(path)


def _write_entry(path: Path, target: str, entry: dict) -> None:
    """Read-modify-write of one target's entry; the caller holds the manifest's lock."""
    manifest = _read_manifest_file(path)
    manifest["targets"][target] = entry
    atomic_write_json(path, manifest)


def new_entry(entry: dict) -> dict:
    """A manifest entry stamped with its creation time."""
    return {"created": _now(), **entry}


def write_manifest_entry(files: ModelFiles, target: str, entry: dict) -> Path:
    """Record one target's calibration (``cpu``, ``trt``...) in the manifest, atomically and under its lock, so
    two runs finishing together never drop each other's entry."""
    path = manifest_path(files)
    with locked(_lock_file(path)):
        _write_entry(path, target, new_entry(entry))
    return path


def prepare_install(files: ModelFiles, final: Path) -> None:
    """Before a calibration's long work: the manifest is readable (finishing a half-done install), and the staging
    and old folders that killed runs left beside ``final`` are removed."""
    path = manifest_path(files)
    read_manifest(files)
    with locked(_lock_file(path)):
        remove_dead_leftovers(final.parent, final.name)


def calibrate_command(cfg: DeployConfig) -> str:
    """The command that calibrates this config's model for its backend."""
    backend = " -o runtime.backend=openvino" if cfg.runtime.backend == "openvino" else ""
    if cfg.runtime.backend == "trt" and cfg.runtime.trt.int8_mode == "explicit":
        backend = " -o runtime.trt.int8_mode=explicit"
    return f"python tools/calibrate.py -c {cfg.source}{backend}"


def rerun_hint(cfg: DeployConfig) -> str:
    """'rerun: <the calibrate command>', for stale-artifact errors."""
    return f"rerun: {calibrate_command(cfg)}"


def check_fresh(entry: dict, files: ModelFiles, cfg: DeployConfig, target: str) -> None:
    """Raise if the model or the preprocessing changed since this calibration entry was written."""
    when = entry.get("created", "an unknown time")
    now = model_fingerprint(files)
    if (now["program_sha256"], now["params_sha256"]) != (entry["model"]["program_sha256"],
                                                          entry["model"]["params_sha256"]):
        raise CalibrationError(f"calibration is stale: model changed since {when}; {rerun_hint(cfg)}")
    if ops_fingerprint(cfg.preprocess) != entry.get("preprocess_sha256"):
        raise CalibrationError(f"calibration is stale: preprocess changed since {when}; {rerun_hint(cfg)}")
    if entry.get("settings_sha256") not in (None, calibration_settings_fingerprint(cfg, target)):
        # Still a valid calibration of this model, only not the one the config now asks for.
        log.warning("the calibration section of %s changed since the calibration of %s; the old artifacts are "
                    "used until you %s", cfg.source, when, rerun_hint(cfg))


# The calibration keys an OpenVINO (NNCF) calibration depends on; the Paddle targets depend on all but nncf and
# the check and budget keys: those say how an artifact was searched for, and its manifest entry records what the
# search settled on (so calibrating with --max-drop, then running without it, uses the artifact).
CHECK_SETTINGS = ("max_drop", "check_images", "check_num", "max_trials", "accept_best")
_OPENVINO_SETTINGS = ("images", "num_images", "seed", "allow_fewer", "nncf")


def calibration_settings_fingerprint(cfg: DeployConfig, target: str) -> str:
    """A hash of the calibration settings the ``target`` ("cpu", "trt", "openvino") depends on. Keys at their
    default value are left out, so a toolkit update that adds a key does not flag earlier calibrations."""
    settings = dataclasses.asdict(cfg.calibration)
    defaults = dataclasses.asdict(type(cfg.calibration)())
    keys = _OPENVINO_SETTINGS if target == "openvino" else [k for k in settings if k not in ("nncf", *CHECK_SETTINGS)]
    changed = {k: str(settings[k]) for k in keys if settings[k] != defaults[k]}
    return sha256_text(json.dumps(changed, sort_keys=True))


def check_artifacts(entry: dict, cfg: DeployConfig) -> list[Path]:
    """The artifact paths of a manifest entry, after checking each exists and matches its recorded hash."""
    art_dir = Path(entry["artifacts"]["dir"])
    expected = entry["artifacts"]["files"]
    paths = [art_dir / name for name in expected]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise CalibrationError(f"calibration artifact missing: {missing[0]}; {rerun_hint(cfg)}")
    if artifact_fingerprint(paths) != expected:
        raise CalibrationError(f"calibration artifacts in {art_dir} do not match the manifest written "
                               f"{entry.get('created')} (interrupted or edited); {rerun_hint(cfg)}")
    return paths


def _same_model(a: Optional[dict], b: dict) -> bool:
    return bool(a) and all(a.get(k) == b[k] for k in ("program_sha256", "params_sha256"))


def guard_engine_cache(files: ModelFiles, cache_dir: Path) -> list[Path]:
    """Before a use_static TensorRT predictor is built: remove serialized engines that were not built from
    this model (Paddle's engine keys do not hash the weights), then record the model's fingerprint beside them.

    Returns the removed engine files.
    """
    record_path = Path(cache_dir) / ENGINE_MANIFEST_NAME
    try:
        record = json.loads(record_path.read_text()) if record_path.is_file() else None
    except ValueError:
        record = None  # an unreadable record proves nothing about the engines: treat it as missing
    now = model_fingerprint(files)
    if record is not None and _same_model(record.get("model"), now):
        return []
    stale = sorted(p for p in Path(cache_dir).glob(f"{TRT_ENGINE_PREFIX}*") if p.is_file())
    for path in stale:
        path.unlink()
    if stale:
        why = (f"the model changed since they were built ({record.get('created', 'unknown time')})" if record
               else "there is no record of the model they were built from")
        log.warning("removed %d stale TensorRT engine(s) from %s: %s; TensorRT rebuilds them on this run",
                    len(stale), cache_dir, why)
    atomic_write_json(record_path, {"format": MANIFEST_FORMAT,
                                    "created": _now(),
                                    "model": now})
    return stale
