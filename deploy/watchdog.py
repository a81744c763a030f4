"""Stops the processes a driver started when the driver ends in any way (exit, crash, SIGKILL):
``python -I deploy/watchdog.py DRIVER_PID``, with the driver holding the write end of our stdin pipe.

Run as a script, standard library only: it starts in milliseconds and never imports Paddle or Ray. It learns the
driver's descendants from /proc twice a second and, once the driver's end of the pipe closes (the kernel closes
it whatever killed the driver), sends SIGTERM then SIGKILL to those still running, matching process start times
so a reused pid is never hit. deploy/batch_infer.py runs it beside the local Ray it starts.
"""
import os
import select
import signal
import sys
import time

Table = dict  # pid -> (parent pid, start time, state)


def process_table() -> Table:
    """Every process's parent, start time and state, from /proc."""
    rows = {}
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            rows[int(name)] = (int(fields[1]), fields[19], fields[0])
        except (OSError, ValueError, IndexError):
            continue
    return rows


def descendants(rows: Table, root: int, me: int) -> dict:
    """pid -> start time of every descendant of ``root`` but this watchdog."""
    children: dict = {}
    for pid, (ppid, _, _) in rows.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid != me:
                found[pid] = rows[pid][1]
                todo.append(pid)
    return found


def still_running(known: dict) -> list:
    """The known pids that still run as the same process (same start time, not a zombie)."""
    rows = process_table()
    return [pid for pid, start in known.items() if pid in rows and rows[pid][1] == start and rows[pid][2] != b"Z"]


def stop(known: dict) -> None:
    """SIGTERM, then SIGKILL after 3 s, to every known process still running."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in still_running(known):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + 3
        while still_running(known) and time.time() < deadline:
            time.sleep(0.1)


def main(driver: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal's group is the driver's to handle
    me, known = os.getpid(), {}
    while True:
        known.update(descendants(process_table(), driver, me))
        if select.select([0], [], [], 0.5)[0] and not os.read(0, 4096):
            break  # the pipe closed: the driver is gone or done
    stop(known)


if __name__ == "__main__":
    main(int(sys.argv[1]))
