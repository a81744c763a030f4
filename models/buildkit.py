"""Helpers shared by the model build scripts (models/*/build.py): markers, atomic directory swaps, and
clean-up of temp dirs left by interrupted builds."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

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
