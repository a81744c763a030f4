"""Batch inference over many images on a Ray cluster (or a local Ray on this machine), with the same config,
image pipeline, predictors and task post-processing as tools/infer.py.

Ray Data carries image paths (never pixels through the driver): decode + preprocess run as parallel tasks
with the config's own ImagePipeline; an actor pool, each actor holding ONE predictor built by our factory
from the config (Paddle-TRT on GPU workers, oneDNN or OpenVINO on CPU workers), runs the model and the task's
post-processing. The driver writes the records in shards, each written to a temporary name and renamed when
complete, so a shard on disk is always whole; ``--resume`` skips every image a finished shard holds, once
OUT_DIR/_run.json shows the same config, model and precision made them. A local Ray the driver starts never
outlives it (LocalRayWatchdog); every check runs before Ray starts.

Ray is an optional dependency (requirements-ray.txt); only this module imports it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from tqdm import tqdm

import deploy
from deploy import cache
from deploy.cache import atomic_write_bytes, atomic_write_text
from deploy.config.loader import DeployConfig
from deploy.data.pipeline import ImagePipeline, ImageRecord, ops_fingerprint
from deploy.data.sources import IMAGE_SUFFIXES, Batch, ImageItem, LabelReader, group_batches, list_images, \
    parse_list_lines
from deploy.engines.factory import create_predictor
from deploy.engines.model import ModelFiles, find_model_files
from deploy.engines.plan import PredictorPlan, resolve_plan
from deploy.errors import DataError, OutputError, UnsupportedError
from deploy.infer import failure_record, result_record, run_inference
from deploy.tasks.registry import build_task

try:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    import ray
except ImportError as e:  # pragma: no cover - the message is the behaviour
    raise UnsupportedError(f"batch inference runs on Ray, which is not installed ({e.name} missing): "
                           "pip install -r requirements-ray.txt") from e

log = logging.getLogger(__name__)
FORMATS = ("jsonl", "parquet")
SHARD_PREFIX = "part-"
STALE_GLOB = f".{SHARD_PREFIX}*.tmp"  # cache.atomic_write_bytes's temp file of a shard a killed run was writing
RUN_RECORD = "_run.json"  # what made the shards of an output folder (run_identity)
RUN_RECORD_FORMAT = 1
CONNECT_TIMEOUT_S = 5.0  # --address: how long the driver waits for the cluster's port to answer
ACTOR_START_TIMEOUT_S = 1800  # every predictor actor built (a TensorRT engine build can take minutes)
DECODE_BATCH = 256  # images per decode task at most (LeNet, 2 CPUs: 32 left the predictors idle, waiting)


@dataclass
class ScaleOptions:
    """Where to read and write, and how big the job is."""

    input: str
    output: Path
    address: Optional[str] = None  # None: start a local Ray on this machine; "auto" or "ray://host:10001"
    workers: int = 1  # predictor actors
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    format: str = "jsonl"
    resume: bool = False
    shard_size: int = 1000  # records per output shard

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise DataError(f"--format {self.format}: use one of {', '.join(FORMATS)}")
        if self.workers < 1 or self.shard_size < 1:
            raise DataError(f"--workers and --shard-size must be >= 1, got {self.workers} and {self.shard_size}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise DataError("--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")


@dataclass
class WorkerStats:
    """One predictor actor's share of the job."""

    images: int = 0
    busy_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.busy_s if self.busy_s > 0 else 0.0


@dataclass
class BatchSummary:
    """What the run did (the same summary line as infer.py, plus resume and per-worker numbers)."""

    images: int
    failures: int
    seconds: float
    skipped: int  # already in finished shards (--resume)
    shards: list[Path]
    workers: dict[str, WorkerStats] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        resumed = f", {self.skipped} already done" if self.skipped else ""
        return (f"summary: {self.images} images, {self.failures} failures, {self.images_per_s:.1f} images/s"
                f"{resumed}; {len(self.shards)} shards written")

    def worker_lines(self) -> list[str]:
        return [f"  worker {name}: {s.images} images, {s.images_per_s:.1f} images/s while busy"
                for name, s in sorted(self.workers.items())]


# ---------------------------------------------------------------- shards


def shard_paths(out_dir: Path, fmt: str) -> list[Path]:
    """Finished shards (temporary files are never named like one)."""
    return sorted(out_dir.glob(f"{SHARD_PREFIX}*.{fmt}"))


def _damaged(shard: Path, why: str) -> DataError:
    return DataError(f"result shard {shard} is damaged ({why}); delete it and rerun with --resume (its images run "
                     "again)")


def read_shard(shard: Path, columns: Optional[list[str]] = None) -> list[dict]:
    """The records of a finished shard; a shard cut short or edited is a one-line DataError naming it."""
    if shard.suffix == ".parquet":
        try:
            return pq.read_table(shard, columns=columns).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:
            raise _damaged(shard, f"not a readable parquet file: {str(e).strip().splitlines()[0]}") from e
    records = []
    with shard.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise _damaged(shard, f"line {number} is not a whole JSON record: {e}") from e
            if not isinstance(record, dict) or "path" not in record:
                raise _damaged(shard, f"line {number} is not a record with a path")
            records.append(record)
    return records


def read_shard_paths(shard: Path) -> list[str]:
    """The image paths a finished shard holds."""
    return [str(record["path"]) for record in read_shard(shard, columns=["path"])]


def write_shard(out_dir: Path, name: str, fmt: str, records: list[dict]) -> Path:
    """Write ``records`` atomically (the project's one writer: temp file + rename), so a shard on disk is
    complete or absent."""
    final = out_dir / f"{SHARD_PREFIX}{name}.{fmt}"
    if fmt == "parquet":
        # every key of every record is a column (from_pylist alone takes the first record's keys only)
        keys = list(dict.fromkeys(key for record in records for key in record))
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist([{key: r.get(key) for key in keys} for r in records]), buffer)
        atomic_write_bytes(final, buffer.getvalue().to_pybytes())
    else:
        atomic_write_text(final, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return final


# ---------------------------------------------------------------- what made the shards (--resume checks it)

# Runtime settings left out of the config fingerprint: speed only, never a record (a resumed run may change
# them, like --workers), or compared on their own as the resolved plan's engine and precision.
UNFINGERPRINTED_RUNTIME = ("batch_size", "cpu_threads", "prefetch_batches", "decode_threads", "gpu_mem_mb", "gpu_id",
                           "device", "backend", "precision")


def _content_or_value(value: Any) -> Any:
    """A file setting (label list, character dict) by its content, so a moved checkout still matches."""
    return cache.sha256_file(value) if isinstance(value, Path) and value.is_file() else str(value)


def config_fingerprint(cfg: DeployConfig) -> dict[str, str]:
    """sha256 per record-deciding section of the typed config (after _base_ and -o overrides), not of its YAML
    text. The model files are fingerprinted by content (run_identity), so model.dir is left out here."""
    runtime = {k: v for k, v in dataclasses.asdict(cfg.runtime).items() if k not in UNFINGERPRINTED_RUNTIME}
    postprocess = {f.name: _content_or_value(getattr(cfg.postprocess, f.name))
                   for f in dataclasses.fields(cfg.postprocess)}
    sections = {"task": cfg.task, "preprocess": ops_fingerprint(cfg.preprocess), "postprocess": postprocess,
                "runtime": runtime, "model.input_shape": cfg.model.input_shape}
    return {name: cache.sha256_text(json.dumps(value, sort_keys=True, default=str))
            for name, value in sections.items()}


def _int8_identity(plan: PredictorPlan, source: ModelFiles) -> Optional[dict]:
    """Which INT8 artifact runs: the files loaded (a quantized model from our calibration, or the model itself)
    and the calibration entry (artifact hashes) of the config's model for this backend."""
    if plan.precision != "int8":
        return None
    target = {"trt": "trt", "openvino": "openvino"}.get(plan.backend, "cpu")
    entry = cache.read_manifest(source)["targets"].get(target) or {}
    loaded = cache.model_fingerprint(plan.model)
    return {"mode": plan.int8_mode, "program_sha256": loaded["program_sha256"],
            "params_sha256": loaded["params_sha256"], "calibration": (entry.get("artifacts") or {}).get("files"),
            "calibrated": entry.get("created")}


def run_identity(cfg: DeployConfig, plan: PredictorPlan) -> dict:
    """What makes the records of a run: config settings, model content, task, device/backend, precision, INT8
    artifact. Written once per output folder (RUN_RECORD); --resume refuses a folder made by another."""
    source = find_model_files(cfg.model) or plan.model  # resolve_plan made sure it exists
    model = cache.model_fingerprint(source)
    return {"format": RUN_RECORD_FORMAT, "config": str(cfg.source), "task": cfg.task,
            "engine": f"{plan.device}/{plan.backend}", "precision": plan.precision,
            "model": {"program": model["program"], "program_sha256": model["program_sha256"],
                      "params_sha256": model["params_sha256"]},
            "int8": _int8_identity(plan, source), "settings": config_fingerprint(cfg)}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text[:12] + "..." if len(text) > 15 else text


def identity_differences(before: dict, now: dict) -> list[str]:
    """What differs between the run that made a folder and this one, e.g. 'precision fp32 there, bf16 now'."""
    changes = [f"{key} {before.get(key)} there, {now[key]} now" for key in ("task", "engine", "precision")
               if before.get(key) != now[key]]
    model = before.get("model") or {}
    changes += [f"model {key.split('_')[0]} sha256 {_short(model.get(key))} there, {_short(now['model'][key])} now"
                for key in ("program_sha256", "params_sha256") if model.get(key) != now["model"][key]]
    if before.get("precision") == now["precision"] and before.get("int8") != now["int8"]:
        changes.append(f"INT8 artifact calibrated {(before.get('int8') or {}).get('calibrated')} there, "
                       f"{(now['int8'] or {}).get('calibrated')} now")
    settings = before.get("settings") or {}
    changes += [f"config {name} differs" for name, digest in now["settings"].items() if settings.get(name) != digest]
    return changes


def _read_run_record(out_dir: Path, shards: int) -> dict:
    path = out_dir / RUN_RECORD
    if not path.is_file():
        raise OutputError(f"--resume: {out_dir} holds {shards} result shards but no {RUN_RECORD} saying which config, "
                          "model and precision made them (an older batch_infer wrote them), so mixing cannot be "
                          "ruled out; run again into an empty --output")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OutputError(f"--resume: cannot read {path} ({e}), so the run that made the {shards} shards in "
                          f"{out_dir} cannot be checked; run again into an empty --output") from e


def check_same_run(out_dir: Path, shards: int, identity: dict) -> None:
    """--resume: the folder's shards were made by this config, model, precision and INT8 artifact."""
    before = _read_run_record(out_dir, shards)
    changes = identity_differences(before, identity)
    if changes:
        raise OutputError(f"--resume: the {shards} shards in {out_dir} come from another run ({'; '.join(changes)}; "
                          f"that run's config: {before.get('config')}); resume with that config, model and "
                          "precision, or write to another --output")


def prepare_output(out_dir: Path, fmt: str, resume: bool, identity: Optional[dict] = None) -> set[str]:
    """Create OUT_DIR; with --resume, the paths already done (after checking the same config, model and precision
    made them); without it, refuse to mix with earlier results. Records ``identity`` before the first shard."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(STALE_GLOB):  # a shard that was being written when a run died
        stale.unlink()
    other = [p for p in shard_paths(out_dir, "parquet" if fmt == "jsonl" else "jsonl")]
    if other:
        raise DataError(f"{out_dir} holds {other[0].suffix[1:]} shards from another run; use --format "
                        f"{other[0].suffix[1:]} or another --output directory")
    finished = shard_paths(out_dir, fmt)
    if finished and not resume:
        raise DataError(f"{out_dir} already holds {len(finished)} result shards; pass --resume to continue that "
                        "run, or choose an empty --output directory")
    if finished and identity is not None:
        check_same_run(out_dir, len(finished), identity)
    elif identity is not None:
        cache.atomic_write_json(out_dir / RUN_RECORD, identity)
    done: set[str] = set()
    for shard in finished:
        done.update(read_shard_paths(shard))
    return done


# ---------------------------------------------------------------- sources


def is_uri(source: str) -> bool:
    """s3://, gs://, hdfs://, file://...: a filesystem pyarrow opens; anything else is a local path."""
    return "://" in source


def _uri_prefix(uri: str, fs_path: str) -> str:
    """What turns a path of the URI's filesystem back into a URI: 's3://' for s3://bucket/dir, 'file://' for
    file:///data, 'hdfs://host:8020' for hdfs://host:8020/data."""
    stripped = uri.rstrip("/")
    at = stripped.rfind(fs_path.rstrip("/"))
    return stripped[:at] if at > 0 else uri.split("://", 1)[0] + "://"


def list_uri(uri: str, labels: LabelReader) -> list[ImageItem]:
    """The images under a folder URI (label = first sub-folder, as for a local folder), one image URI, or the
    lines of a list-file URI (paths relative to it). ImageItem.path holds the URI as a string here."""
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(root)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"cannot open {uri}: {e}; check the URI and the credentials pyarrow uses") from e
    prefix = _uri_prefix(uri, root)
    if info.type == pafs.FileType.Directory:
        files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                       if f.type == pafs.FileType.File and Path(f.path).suffix.lower() in IMAGE_SUFFIXES)
        items = []
        for path in files:
            parts = path[len(root.rstrip("/")) + 1:].split("/")
            items.append(ImageItem(prefix + path, labels.folder_label(parts[0]) if len(parts) > 1 else None))
    elif info.type == pafs.FileType.File and Path(root).suffix.lower() in IMAGE_SUFFIXES:
        items = [ImageItem(uri)]
    elif info.type == pafs.FileType.File:
        with fs.open_input_stream(root) as f:
            lines = f.read().decode("utf-8").splitlines()
        base = root.rsplit("/", 1)[0]
        items = [ImageItem(path if is_uri(path) else prefix + f"{base}/{path}", label)
                 for path, label in parse_list_lines(lines, labels, uri)]
    else:
        raise DataError(f"image source not found: {uri}")
    if not items:
        raise DataError(f"no images found in {uri} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return [replace(item, index=i) for i, item in enumerate(items)]


def _read_uri(uri: str, filesystems: dict[str, Any]) -> np.ndarray:
    """The bytes of one image URI (one filesystem per scheme and host, reused within a task)."""
    key = uri.split("://", 1)[0] + "://" + uri.split("://", 1)[1].split("/", 1)[0]
    try:
        if key not in filesystems:
            fs, path = pafs.FileSystem.from_uri(uri)
            filesystems[key] = (fs, _uri_prefix(uri, path))
        fs, prefix = filesystems[key]
        with fs.open_input_file(uri[len(prefix):]) as f:
            return np.frombuffer(f.readall(), np.uint8)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"cannot read image {uri}: {e}") from e


# ---------------------------------------------------------------- Ray stages


def _decode(rows: dict[str, np.ndarray], ops: list[Any]) -> dict[str, Any]:
    """Ray task: decode + preprocess a batch of paths or URIs with the config's pipeline. An unreadable image
    keeps its row, with the error text and no pixels."""
    pipeline = ImagePipeline(ops)
    filesystems: dict[str, Any] = {}
    arrays, shapes, src_hw, resized_hw, errors = [], [], [], [], []
    for path in rows["path"]:
        try:
            if is_uri(path):
                array, record = pipeline.load_bytes(_read_uri(path, filesystems), path)
            else:
                array, record = pipeline.load(Path(path))
            error = ""
        except DataError as e:
            array, record, error = np.zeros((0,), np.float32), ImageRecord((0, 0), (0, 0)), str(e)
        arrays.append(array.tobytes())
        shapes.append(json.dumps(list(array.shape)))
        src_hw.append(json.dumps(list(record.src_hw)))
        resized_hw.append(json.dumps(list(record.resized_hw)))
        errors.append(error)
    return {**rows, "pixels": np.array(arrays, dtype=object), "shape": np.array(shapes),
            "src_hw": np.array(src_hw), "resized_hw": np.array(resized_hw), "error": np.array(errors)}


class Worker:
    """Ray actor: ONE predictor from the config (built once, on the worker's node), run on each batch of
    preprocessed images, post-processed by the task into infer.py's records."""

    def __init__(self, cfg: DeployConfig):
        self.cfg = cfg
        self.task = build_task(cfg)
        self.pipeline = ImagePipeline(cfg.preprocess)
        self.predictor = create_predictor(resolve_plan(cfg, quiet=True))
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, Any]:
        start = time.perf_counter()
        records: dict[int, dict] = {}
        pairs = []
        for i, path in enumerate(rows["path"]):
            item = ImageItem(Path(path), None, int(rows["index"][i]))
            label = json.loads(rows["label"][i]) if rows["label"][i] else None  # "" = no label
            if rows["error"][i]:
                records[i] = failure_record(path, str(rows["error"][i]))
                continue
            array = np.frombuffer(rows["pixels"][i], np.float32).reshape(json.loads(rows["shape"][i]))
            record = ImageRecord(tuple(json.loads(rows["src_hw"][i])), tuple(json.loads(rows["resized_hw"][i])))
            pairs.append(((i, item, label, record, str(path)), array))
        for keys, array in group_batches(pairs, self.pipeline, self.cfg.runtime.batch_size):
            batch = Batch([key[1] for key in keys], array, [key[3] for key in keys])
            for (i, _, label, _, path), result in zip(keys, self.task.predict(self.predictor, batch)):
                records[i] = result_record(self.task, path, result, label)  # the path as given (a URI stays one)
        busy = time.perf_counter() - start
        n = len(rows["path"])
        return {"record": np.array([json.dumps(records[i], ensure_ascii=False) for i in range(n)], dtype=object),
                "worker": np.array([self.name] * n), "busy_s": np.full(n, busy / max(n, 1))}


# ---------------------------------------------------------------- the job


def _runtime_env() -> dict:
    """Ship the deploy package to every worker (a cluster's nodes need only Python and the requirements)."""
    return {"py_modules": [str(Path(deploy.__file__).parent)],
            "env_vars": {"FLAGS_enable_pir_api": os.environ.get("FLAGS_enable_pir_api", "0")}}


class Terminated(BaseException):
    """SIGTERM reached the driver (a BaseException, like KeyboardInterrupt, so no ``except Exception`` in Ray or
    here swallows it); the tool turns it into one line and exit 143."""


def _address_endpoint(address: str) -> Optional[tuple[str, int]]:
    """The host and port a driver reaches first: Ray Client's for ray://HOST[:PORT], the GCS's for HOST:PORT or
    for "auto" (RAY_ADDRESS, else the cluster `ray start` last started here). None when Ray must judge it."""
    if address == "auto":
        try:  # Ray's own lookup (a private helper of the pinned Ray, requirements-ray.txt)
            address = ray._private.services.canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as e:
            why = "several Ray clusters run here" if "multiple" in str(e) else "no running Ray cluster found"
            raise UnsupportedError(f"--address auto: {why}; start one (ray start --head) or give --address "
                                   "HOST:PORT") from e
    scheme, _, rest = address.rpartition("://")
    host, _, port = rest.rpartition(":")
    if scheme == "ray" and not port.isdigit():
        host, port = rest, "10001"  # Ray Client's default port
    return (host.strip("[]"), int(port)) if host and port.isdigit() and scheme in ("", "ray") else None


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds when nothing listens at --address (ray.init itself retries a dead GCS forever)."""
    endpoint = _address_endpoint(address)
    if endpoint is None:
        return
    host, port = endpoint
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        why = "no answer" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise UnsupportedError(f"--address {address}: nothing answers at {host}:{port} ({why} within "
                               f"{timeout_s:g} s); start the cluster there (ray start --head) or fix --address"
                               ) from e


# Ray kills its gcs_server and raylet with the driver (PR_SET_PDEATHSIG), but its agents (ray::DashboardAgent,
# ray::RuntimeEnvAgent) then hang reporting the raylet's death to the dead GCS and outlive the driver (Ray 2.60):
# deploy/watchdog.py stops them, whatever ended the driver.
WATCHDOG_SCRIPT = Path(__file__).with_name("watchdog.py")


class LocalRayWatchdog:
    """A process, in its own session, that stops the local Ray this driver starts when the driver ends."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-I", str(WATCHDOG_SCRIPT), str(os.getpid())],
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)

    def close(self, timeout_s: float = 15.0) -> None:
        """Let it stop what is left of the local Ray now, and wait for it."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the local Ray watchdog (pid %d) is still stopping Ray processes", self.process.pid)


def _init_kwargs(options: ScaleOptions, quiet: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"runtime_env": _runtime_env(), "log_to_driver": False, "include_dashboard": False,
                              "logging_level": logging.WARNING if quiet else logging.INFO}
    if options.address is None:
        # "local": a new Ray even when RAY_ADDRESS is set or a `ray start` cluster (maybe dead) is recorded here.
        # Its logical CPUs must leave room for the decode tasks beside the actors, or nothing schedules.
        cpus = os.cpu_count() or 1
        kwargs.update(address="local", num_cpus=max(cpus, int(np.ceil(options.workers * options.cpus_per_worker)) + 1))
    else:
        kwargs["address"] = options.address
    return kwargs


@contextlib.contextmanager
def ray_session(options: ScaleOptions, quiet: bool) -> Iterator[None]:
    """Connect to --address, or start a local Ray that never outlives this process; disconnect or stop it after."""
    if ray.is_initialized():  # the caller's own Ray session: theirs to stop
        yield
        return
    watchdog = LocalRayWatchdog() if options.address is None else None
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        try:
            ray.init(**_init_kwargs(options, quiet))
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UnsupportedError(f"cannot start or reach Ray at {options.address or 'a new local cluster'}: "
                                   f"{str(e).strip().splitlines()[0]}; check --address (ray start --head prints it)"
                                   ) from e
        finally:
            if on_sigterm is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_sigterm)  # ray.init replaces it with sys.exit(15)
        yield
    finally:
        ray.shutdown()
        if watchdog is not None:
            watchdog.close()


def _worker_config(cfg: DeployConfig, options: ScaleOptions) -> DeployConfig:
    """The config each actor builds its predictor from: on CPU workers as many math threads as the worker's
    CPUs (runtime.cpu_threads 0 would mean every core of the node, which the other workers share)."""
    runtime = cfg.runtime
    if options.gpus_per_worker == 0 and runtime.cpu_threads == 0:
        runtime = replace(runtime, cpu_threads=max(1, int(options.cpus_per_worker)))
    return replace(cfg, runtime=runtime)


def run_batch_inference(cfg: DeployConfig, options: ScaleOptions, *, quiet: bool = False) -> BatchSummary:
    """Run the config over every image of ``options.input`` on Ray; write result shards to ``options.output``.
    Every check (output folder, cluster address, images, plan, --resume) happens before Ray starts."""
    cache.check_output_dir(options.output, "--output")
    if options.address is not None:
        check_reachable(options.address)
    task = build_task(cfg)
    items = list_uri(options.input, task) if is_uri(options.input) else list_images(options.input, task)
    worker_cfg = _worker_config(cfg, options)
    plan = resolve_plan(worker_cfg, quiet=True)  # an impossible plan or a stale calibration fails here, not on workers
    done = prepare_output(options.output, options.format, options.resume, run_identity(worker_cfg, plan))
    todo = [item for item in items if str(item.path) not in done]
    log.info("%d images, %d already done, %d to run on %d workers", len(items), len(items) - len(todo), len(todo),
             options.workers)
    summary = BatchSummary(0, 0, 0.0, len(items) - len(todo), [])
    if not todo:
        return summary
    with ray_session(options, quiet):
        start = time.perf_counter()
        _write_results(_dataset(task, todo, worker_cfg, options, quiet), len(todo), options, summary, quiet)
        summary.seconds = time.perf_counter() - start
    return summary


def _dataset(task: Any, todo: list[ImageItem], worker_cfg: DeployConfig, options: ScaleOptions, quiet: bool) -> Any:
    """paths -> decode + preprocess tasks -> the predictor actor pool -> records."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our bar counts written records
    # Start work only once every actor is built (an actor still importing Paddle would miss a small job), and a
    # cluster without the CPUs/GPUs asked fails instead of waiting forever.
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    if quiet:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    rows = [{"path": str(item.path), "index": item.index,
             "label": json.dumps(task.label_json(item.label)) if item.label is not None else ""} for item in todo]
    batch = worker_cfg.runtime.batch_size
    # Ray Data hands each decoded block to the idle actor that finished last, so while decoding is slower than
    # inference ONE actor would take every block. The first round (one batch per actor) is decoded before the
    # stream starts: its blocks wait together when the actors start and each actor takes one.
    first = min(len(rows), batch * options.workers)
    dataset = _decoded(rows[:first], worker_cfg, batch, blocks=-(-first // batch)).materialize()
    if rows[first:]:
        decode_batch = max(1, min(DECODE_BATCH, -(-len(rows) // (4 * options.workers))))
        dataset = dataset.union(_decoded(rows[first:], worker_cfg, decode_batch))
    return dataset.map_batches(
        Worker, fn_constructor_kwargs={"cfg": worker_cfg}, batch_size=batch,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_gpus=options.gpus_per_worker or None,
        num_cpus=options.cpus_per_worker)  # Ray Data restarts a dead actor and retries its batches (its defaults)


def _decoded(rows: list[dict], worker_cfg: DeployConfig, batch_size: int, blocks: Optional[int] = None) -> Any:
    """Decode + preprocess tasks over ``rows`` (paths) in batches of ``batch_size``."""
    return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        _decode, fn_kwargs={"ops": worker_cfg.preprocess}, batch_format="numpy", batch_size=batch_size, num_cpus=0.5)


def _write_results(dataset: Any, total: int, options: ScaleOptions, summary: BatchSummary, quiet: bool) -> None:
    """Collect the records into shards of --shard-size, each written whole (a kill loses only unwritten ones)."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    pending: list[dict] = []
    workers: dict[str, WorkerStats] = defaultdict(WorkerStats)
    with tqdm(total=total, disable=quiet, unit="img", desc="batch infer") as bar:
        for rows_out in _iter_results(dataset, options):
            for text, worker, busy in zip(rows_out["record"], rows_out["worker"], rows_out["busy_s"]):
                record = json.loads(text)
                pending.append(record)
                summary.images += 1
                summary.failures += "error" in record
                workers[str(worker)].images += 1
                workers[str(worker)].busy_s += float(busy)
            bar.update(len(rows_out["record"]))
            while len(pending) >= options.shard_size:
                name = f"{run_id}-{len(summary.shards):06d}"
                summary.shards.append(write_shard(options.output, name, options.format, pending[:options.shard_size]))
                del pending[:options.shard_size]
        if pending:
            summary.shards.append(write_shard(options.output, f"{run_id}-{len(summary.shards):06d}",
                                              options.format, pending))
    summary.workers = dict(workers)


def _iter_results(dataset: Any, options: ScaleOptions) -> Iterator[dict[str, np.ndarray]]:
    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="numpy")
    except ray.exceptions.GetTimeoutError as e:
        raise UnsupportedError(f"the {options.workers} predictor actors did not all start within "
                               f"{ACTOR_START_TIMEOUT_S} s: the cluster lacks the CPUs/GPUs they ask for (--workers, "
                               "--cpus-per-worker, --gpus-per-worker) or building a predictor hangs") from e


def read_records(out_dir: Path) -> list[dict]:
    """Every record of every finished shard in OUT_DIR (for checks and small jobs)."""
    return [record for fmt in FORMATS for shard in shard_paths(out_dir, fmt) for record in read_shard(shard)]


@dataclass
class VersusInfer:
    """tools/batch_infer.py against tools/infer.py on the same images: speed, and whether the records agree."""

    infer_images_per_s: float
    batch_images_per_s: float
    same: int
    compared: int

    def line(self) -> str:
        return (f"infer.py: {self.infer_images_per_s:.1f} images/s; batch_infer.py: {self.batch_images_per_s:.1f} "
                f"images/s ({self.batch_images_per_s / self.infer_images_per_s:.2f}x); identical records: "
                f"{self.same}/{self.compared}")


def versus_infer(cfg: DeployConfig, options: ScaleOptions, summary: BatchSummary, scratch: Path) -> VersusInfer:
    """Run tools/infer.py's loop on the same images (one process, the config's own threads and batch size)
    and compare every record with the shards'."""
    theirs = scratch / "infer.json"
    single = run_inference(cfg, images=options.input, output=theirs, quiet=True)
    expected = {r["path"]: r for r in json.loads(theirs.read_text())["results"]}
    ours = {r["path"]: r for r in read_records(options.output) if "error" not in r}
    same = sum(ours.get(path) == record for path, record in expected.items())
    return VersusInfer(single.images_per_s, summary.images_per_s, same, len(expected))
