"""Child processes that ``forgeflow`` starts (the UI servers), and stopping all of them.

A server such as ``mlflow ui`` starts helpers of its own (uvicorn workers, job-runner and
huey consumer processes), and some of those start their own sessions, so signalling the
direct child is not enough: ``stop_all`` signals each child's process group, then waits,
then kills every descendant it saw that is still alive. Linux (reads ``/proc``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc/<pid>/stat)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces: split after it
        fields = stat[stat.rfind(")") + 2:].split()
        out[int(d.name)] = int(fields[1])
    return out


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    parents = _parents()
    children: dict[int, list[int]] = {}
    for p, pp in parents.items():
        children.setdefault(pp, []).append(p)
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"      # a zombie is gone


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    """Start a server in its own process group, so the group can be signalled at once."""
    return subprocess.Popen(cmd, start_new_session=True, **kw)


def stop_all(procs: list[subprocess.Popen], grace_s: float = 15.0) -> None:
    """SIGINT each child's process group (a server's own graceful stop), SIGTERM after
    ``grace_s``, then SIGKILL whatever is left of every process seen below them."""
    seen: set[int] = set()
    for p in procs:
        seen |= descendants(p.pid)
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0)):
        for p in procs:
            seen |= descendants(p.pid) if p.poll() is None else set()
            if p.poll() is None:
                try:
                    os.killpg(p.pid, sig)
                except OSError:
                    pass
        deadline = time.time() + wait_s
        while time.time() < deadline and (any(p.poll() is None for p in procs)
                                          or any(alive(x) for x in seen)):
            time.sleep(0.2)
    for pid in [p.pid for p in procs if p.poll() is None] + sorted(seen):
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
