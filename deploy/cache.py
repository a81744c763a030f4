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
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

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
        raise OutputError(f"{option}: {e}") from None


def check_output_dir(path: Path, option: str, need_bytes: int = 0) -> None:
    """Before a run: files can be written inside the folder ``path`` (from ``option``), created if missing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder; give a folder path")
    try:
        _check_can_create_in(_existing_ancestor(path), path, need_bytes)
    except OutputError as e:
        raise OutputError(f"{option}: {e}") from None


def staging_dir(final: Path) -> Path:
    """A fresh scratch directory beside ``final`` (same filesystem, so the final rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    os.chmod(staged, 0o777 & ~_umask())
    return staged


def replace_dir(staged: Path, final: Path) -> None:
    """Move a fully written ``staged`` directory to ``final``, replacing what was there."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A scratch dir beside ``final``: moved into place when the block completes, removed when it fails."""
    staged = staging_dir(final)
    try:
        yield staged
        replace_dir(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


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


def read_manifest(files: ModelFiles) -> dict:
    """The manifest beside the model, or an empty one."""
    path = opt_cache_dir(files) / MANIFEST_NAME
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "targets": {}}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise CalibrationError(f"{path} is not valid JSON ({e}); delete it and rerun tools/calibrate.py") from e
    if data.get("format") != MANIFEST_FORMAT:
        raise CalibrationError(f"{path} has format {data.get('format')}, expected {MANIFEST_FORMAT}; "
                               "rerun tools/calibrate.py")
    return data


def write_manifest_entry(files: ModelFiles, target: str, entry: dict) -> Path:
    """Record one target's calibration (``cpu`` or ``trt``) in the manifest, atomically."""
    manifest = read_manifest(files)
    manifest["targets"][target] = {"created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                                   **entry}
    path = opt_cache_dir(files) / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def calibrate_command(cfg: DeployConfig) -> str:
    """The command that calibrates this config's model for its backend."""
    backend = " -o runtime.backend=openvino" if cfg.runtime.backend == "openvino" else ""
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


# The calibration keys an OpenVINO (NNCF) calibration depends on; the Paddle targets depend on all but nncf.
_OPENVINO_SETTINGS = ("images", "num_images", "seed", "allow_fewer", "nncf")


def calibration_settings_fingerprint(cfg: DeployConfig, target: str) -> str:
    """A hash of the calibration settings the ``target`` ("cpu", "trt", "openvino") depends on. Keys at their
    default value are left out, so a toolkit update that adds a key does not flag earlier calibrations."""
    settings = dataclasses.asdict(cfg.calibration)
    defaults = dataclasses.asdict(type(cfg.calibration)())
    keys = _OPENVINO_SETTINGS if target == "openvino" else [k for k in settings if k != "nncf"]
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
                                    "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                                    "model": now})
    return stale
