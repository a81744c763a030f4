"""Helpers shared by the model build scripts (models/*/build.py): markers, atomic directory swaps, and
clean-up of temp dirs left by interrupted builds."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

LOGGER = logging.getLogger("models")


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
