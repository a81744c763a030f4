"""Shared command-line pieces: option groups every tool reuses, and the wrapper that turns user errors
into one line and exit code 2 (real bugs keep their traceback)."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional

from deploy import signals
from deploy.errors import ConfigError, DeployError

PRECISIONS = ("fp32", "fp16", "int8", "bf16")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """-c CONFIG, -o key=value overrides, --quiet."""
    group = parser.add_argument_group("config")
    group.add_argument("-c", "--config", required=True, help="YAML config file")
    group.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. -o runtime.batch_size=8 (repeatable)")
    group.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")


def add_runtime_args(parser: argparse.ArgumentParser, *, precision: bool = True) -> None:
    """--device, --backend, --precision, --batch-size, --threads (shortcuts for runtime.* overrides)."""
    group = parser.add_argument_group("runtime (shortcuts for -o runtime.*)")
    group.add_argument("--device", choices=("auto", "cpu", "gpu"))
    group.add_argument("--backend", choices=("paddle", "trt", "openvino"))
    if precision:
        group.add_argument("--precision", choices=PRECISIONS)
    group.add_argument("--batch-size", type=int)
    group.add_argument("--threads", type=int, help="CPU math threads (0 = all cores)")


_SHORTCUTS = {"device": "runtime.device", "backend": "runtime.backend", "precision": "runtime.precision",
              "batch_size": "runtime.batch_size", "threads": "runtime.cpu_threads"}


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """Flag shortcuts first, then explicit -o overrides (which win)."""
    out = [f"{key}={getattr(args, name)}" for name, key in _SHORTCUTS.items()
           if getattr(args, name, None) is not None]
    return out + list(getattr(args, "override", []))


def load_config_from_args(args: argparse.Namespace, extra: Optional[list[str]] = None):
    """The typed config named by -c, with shortcuts and -o applied."""
    # Imported here, not for a cycle (loader never imports cli) but for start-up: the loader pulls in OpenCV
    # (~0.9 s), which --help and argument errors of every tool should not wait for.
    from deploy.config.loader import load_config

    return load_config(args.config, overrides_from_args(args) + list(extra or []))


def setup_logging(quiet: bool) -> None:
    """INFO to stderr (WARNING with --quiet); silence Paddle's import-time noise."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s",
                        stream=sys.stderr, force=True)
    warnings.filterwarnings("ignore", message=".*ccache.*")
    warnings.filterwarnings("ignore", message=".*Setuptools is replacing distutils.*")


def run_tool(main: Callable[[Optional[list[str]]], Optional[int]], argv: Optional[list[str]] = None) -> None:
    """Run a tool's main; a DeployError becomes one 'error: ...' line and exit 2; Ctrl-C (SIGINT) and SIGTERM
    unwind (staging folders removed, nothing half-installed) and exit 130 and 143."""
    quiet = "--quiet" in (argv if argv is not None else sys.argv[1:])
    setup_logging(quiet)
    signals.install()
    try:
        code = main(argv)
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except signals.Terminated as e:
        print(f"error: terminated (signal {e.signum}); artifacts from earlier runs are untouched", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("error: interrupted; artifacts from earlier runs are untouched", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def add_comparison_args(parser: argparse.ArgumentParser) -> None:
    """--precisions, --compare, --output-dir: which runs a precision report compares, and where it goes."""
    group = parser.add_argument_group("comparison (the -c config at fp32 is always run: it is the reference)")
    group.add_argument("--precisions", default="fp32,int8", metavar="LIST",
                       help=f"precisions of the -c config, comma-separated from {', '.join(PRECISIONS)} "
                            "(default: fp32,int8)")
    group.add_argument("--compare", action="append", default=[], metavar="[LABEL=]CONFIG:PRECISION",
                       help="add another config at one precision, e.g. qat=configs/lenet_mnist_qat.yml:int8; runtime "
                            "shortcuts (--threads, --device, ...) apply to it too, -o only to -c "
                            "(repeatable; default label: <config name>:<precision>)")
    group.add_argument("--backends", metavar="LIST", help="run every precision on each engine, e.g. paddle,openvino; "
                                                          "labels <backend>:<precision>, reference paddle:fp32")
    group.add_argument("--variant", action="append", default=[], metavar="LABEL=KEY=VALUE[,KEY=VALUE]",
                       help="add the -c config with more overrides, e.g. no_memopt=runtime.paddle.memory_optim=false "
                            "or tp=runtime.openvino.performance_hint=throughput,runtime.precision=int8 "
                            "(precision fp32 unless given; repeatable)")
    group.add_argument("--output-dir", type=Path, help="write report.json, report.md and PNG plots here")


def add_benchmark_args(parser: argparse.ArgumentParser) -> None:
    """--batch-sizes, --warmup, --iters."""
    group = parser.add_argument_group("benchmark")
    group.add_argument("--batch-sizes", metavar="LIST", help="comma-separated, e.g. 1,8,64 "
                                                             "(default: runtime.batch_size)")
    group.add_argument("--warmup", type=int, default=10, help="untimed runs per predictor (default: 10)")
    group.add_argument("--iters", type=int, default=100, help="timed iterations per run (default: 100)")
    group.add_argument("--budget", type=float, metavar="POINTS",
                       help="accuracy loss allowed vs the reference, in points of the task's metric, e.g. 0.5: "
                            "names the fastest run within it at each batch size (needs labelled images)")


def int_list(text: Optional[str], option: str) -> list[int]:
    """'1,8,64' -> [1, 8, 64]; positive integers only (ConfigError otherwise)."""
    if not text:
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"{option} '{text}': expected comma-separated integers, e.g. 1,8,64") from e
    if not values or min(values) < 1:
        raise ConfigError(f"{option} '{text}': expected positive integers, e.g. 1,8,64")
    return values


def run_specs_from_args(args: argparse.Namespace) -> list:
    """The RunSpecs of -c at --precisions plus each --compare: runtime shortcuts apply to all, -o to -c only."""
    from deploy.report.runs import parse_backends, parse_precisions, run_specs  # start-up, as above

    shortcuts = overrides_from_args(argparse.Namespace(**{**vars(args), "override": []}))
    backends = parse_backends(args.backends) if args.backends else []
    return run_specs(args.config, parse_precisions(args.precisions), args.compare, args.override, shortcuts,
                     backends, args.variant)
