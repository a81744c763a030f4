"""What a comparison runs: the ``-c`` config at each of ``--precisions``, plus ``--compare`` entries that bring
other configs (e.g. a QAT model) into the same report. The ``-c`` config at fp32 is always run first: it is the
reference every other run is compared with.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from deploy.config.loader import DeployConfig, load_config, parse_labelled_overrides
from deploy.env import BACKENDS, PRECISIONS
from deploy.errors import ConfigError
from deploy.engines.plan import PredictorPlan, resolve_plan
from deploy.data.pipeline import ops_fingerprint
from deploy.tasks.base import Task
from deploy.tasks.registry import build_task

log = logging.getLogger(__name__)

REFERENCE_PRECISION = "fp32"
COMPARE_FORMAT = "[LABEL=]CONFIG:PRECISION, e.g. qat=configs/lenet_mnist_qat.yml:int8"


@dataclass(frozen=True)
class RunSpec:
    """One column of the report: a config file at one precision, under a unique label."""

    label: str
    config: Path
    precision: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Run:
    """A loaded RunSpec: its typed config (precision applied), its checked predictor plan and its task."""

    spec: RunSpec
    cfg: DeployConfig
    plan: PredictorPlan
    task: Task

    @property
    def label(self) -> str:
        return self.spec.label

    def with_batch_size(self, batch_size: int) -> "Run":
        """The same run at another batch size (TensorRT sizes its engine from runtime.batch_size)."""
        runtime = replace(self.cfg.runtime, batch_size=batch_size)
        return replace(self, cfg=replace(self.cfg, runtime=runtime), plan=replace(self.plan, runtime=runtime))


def parse_precisions(text: str) -> list[str]:
    """'fp32,int8' -> ['fp32', 'int8']."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PRECISIONS]
    if unknown or not names:
        raise ConfigError(f"--precisions '{text}': unknown precision {unknown[0] if unknown else text!r}; "
                          f"give a comma-separated list of {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(names))


def parse_compare(text: str) -> tuple[Optional[str], Path, str]:
    """'[LABEL=]CONFIG:PRECISION' -> (label or None, config path, precision)."""
    label, sep, rest = text.partition("=")
    if not sep:
        label, rest = None, text
    config, colon, precision = rest.rpartition(":")
    if not colon or not config or precision not in PRECISIONS or (sep and not label):
        raise ConfigError(f"--compare '{text}': expected {COMPARE_FORMAT} (precision one of {', '.join(PRECISIONS)})")
    return label, Path(config), precision


def parse_backends(text: str) -> list[str]:
    """'paddle,openvino' -> ['paddle', 'openvino'] (Paddle first: its fp32 run is the reference)."""
    names = list(dict.fromkeys(b.strip() for b in text.split(",") if b.strip()))
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        raise ConfigError(f"--backends '{text}': unknown backend {unknown[0] if unknown else text!r}; give a "
                          f"comma-separated list of {', '.join(BACKENDS)}")
    return sorted(names, key=lambda b: b != "paddle")


# OpenVINO runs on the CPU: with device auto a GPU machine would otherwise put it on the GPU
BACKEND_OVERRIDES = {"openvino": ("runtime.backend=openvino", "runtime.device=cpu")}


def parse_variant(text: str) -> tuple[str, str, list[str]]:
    """'LABEL=KEY=VALUE[,KEY=VALUE...]' -> (label, precision, overrides); the precision comes from a
    runtime.precision override (default fp32) and is taken out of the overrides."""
    label, overrides = parse_labelled_overrides(text, "--variant", "no_memopt=runtime.paddle.memory_optim=false")
    precision = REFERENCE_PRECISION
    kept = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.strip() == "runtime.precision":
            precision = value.strip()
            if precision not in PRECISIONS:
                raise ConfigError(f"--variant '{text}': precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        else:
            kept.append(override)
    return label, precision, kept


def run_specs(config: Path | str, precisions: Sequence[str], compare: Sequence[str] = (),
              overrides: Sequence[str] = (), shared: Sequence[str] = (),
              backends: Sequence[str] = (), variants: Sequence[str] = ()) -> list[RunSpec]:
    """The reference (``config`` at fp32), ``config`` at each other precision, then each ``--variant`` (``config``
    with more overrides, e.g. one Paddle knob), then each ``--compare`` entry.

    With ``backends``, ``config`` runs at every precision on every backend, labelled ``<backend>:<precision>``;
    the reference is the first backend's fp32 (Paddle's when it is listed). ``shared`` overrides (the runtime
    shortcuts like --threads) apply to every run, so the comparison is fair; ``overrides`` (-o) apply to
    ``config`` only: a compare config is taken as its file says.
    """
    if REFERENCE_PRECISION not in precisions:
        log.info("adding %s of %s as the reference run", REFERENCE_PRECISION, config)
    ordered = [REFERENCE_PRECISION] + [p for p in precisions if p != REFERENCE_PRECISION]
    if backends:
        specs = [RunSpec(f"{b}:{p}", Path(config), p,
                         (*shared, *overrides, *BACKEND_OVERRIDES.get(b, (f"runtime.backend={b}",))))
                 for b in backends for p in ordered]
    else:
        specs = [RunSpec(p, Path(config), p, (*shared, *overrides)) for p in ordered]
    for text in variants:
        label, precision, extra = parse_variant(text)
        specs.append(RunSpec(label, Path(config), precision, (*shared, *overrides, *extra)))
    for text in compare:
        label, path, precision = parse_compare(text)
        specs.append(RunSpec(label or f"{path.stem}:{precision}", path, precision, tuple(shared)))
    labels = [s.label for s in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"run label {duplicates[0]!r} is used twice; name --compare runs with LABEL=, "
                          f"e.g. --compare qat=configs/lenet_mnist_qat.yml:int8")
    return specs


def load_runs(specs: Sequence[RunSpec], *, quiet: bool = False) -> list[Run]:
    """Load every config and check every plan up front, so an impossible run fails before any work."""
    runs = []
    for spec in specs:
        cfg = load_config(spec.config, [*spec.overrides, f"runtime.precision={spec.precision}"])
        runs.append(Run(spec, cfg, resolve_plan(cfg, quiet=quiet), build_task(cfg)))
        log.info("run %-16s %s", spec.label, runs[-1].plan.describe())
    return runs


def check_same_preprocess(runs: Sequence[Run]) -> None:
    """Comparisons feed every run the same arrays: all configs must preprocess identically."""
    reference = runs[0]
    for run in runs[1:]:
        if run.cfg.task != reference.cfg.task:
            raise ConfigError(f"run '{run.label}' ({run.spec.config}) is task '{run.cfg.task}' but '{reference.label}' "
                              f"is '{reference.cfg.task}'; a comparison compares models of one task")
        if ops_fingerprint(run.cfg.preprocess) != ops_fingerprint(reference.cfg.preprocess):
            raise ConfigError(f"run '{run.label}' ({run.spec.config}) preprocesses images differently from "
                              f"'{reference.label}' ({reference.spec.config}); every run of a comparison sees the "
                              "same preprocessed batches, so give them the same 'preprocess' ops")
