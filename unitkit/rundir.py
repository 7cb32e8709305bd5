"""Run directories: what unitkit may start, replace or delete in them, and nothing else.

A run directory carries a marker file that unitkit writes when it creates the run. Only a folder with that
marker is ever cleared, and only of the entries unitkit writes there (:data:`OWNED`): a user's own files beside
them stay. ``--overwrite`` does not delete the old run at once: once the new run has passed its start-up checks
(data, device, networks, plugins) the old run's entries are moved aside into ``.previous-run/``, deleted at the
new run's first checkpoint, and moved back if the new run fails before it.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path
from typing import IO, Literal

try:
    import fcntl
except ImportError:  # not a POSIX system: run directories are not locked
    fcntl = None

from unitkit.checkpoint import list_checkpoints
from unitkit.errors import UsageError

#: Written by unitkit into every run directory it creates.
MARKER = ".unitkit-run"
#: Where ``--overwrite`` keeps the old run until the new one has a checkpoint.
PREVIOUS = ".previous-run"
#: How a run starts in its directory (see :func:`check_start`).
Start = Literal["fresh", "restart", "replace"]
#: Everything unitkit writes in a run directory besides its marker; ``--overwrite`` clears these and nothing else.
OWNED = ("recipe.toml", "log.jsonl", "checkpoints", "samples", "losses.png", "index.html",
         "evaluation.json", "confusion.png", "crash.log", "tensorboard", "wandb")  # fmt: skip


#: The marker files this process holds locked, one per run directory it is training in.
_locks: dict[Path, IO[str]] = {}


def lock(run_dir: Path) -> None:
    """Hold ``run_dir``'s marker locked until :func:`release`, so that no other unitkit process starts, restarts,
    replaces or resumes the run while it trains (a resubmitted job, the same command in another terminal)."""
    if fcntl is None:
        return
    handle = (run_dir / MARKER).open("a", encoding="utf-8")
    if not _locked(handle):
        handle.close()
        raise _in_use(run_dir)
    _locks[run_dir.resolve()] = handle


def release(run_dir: Path) -> None:
    """Let go of the lock :func:`lock` took (at the end of the run, however it ends)."""
    handle = _locks.pop(run_dir.resolve(), None)
    if handle is not None:
        handle.close()


def in_use(run_dir: Path) -> bool:
    """Whether another unitkit process is training in ``run_dir``."""
    release(run_dir)  # a lock this process still holds is from a run that has ended
    marker = run_dir / MARKER
    if fcntl is None or not marker.is_file():
        return False
    with marker.open("a", encoding="utf-8") as probe:  # closing it lets go of the lock it may take
        return not _locked(probe)


def _locked(handle: IO[str]) -> bool:
    """Lock ``handle``'s file for this handle alone, without waiting; False where another handle holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _in_use(run_dir: Path) -> UsageError:
    return UsageError(f"{run_dir} is in use by another unitkit process; wait for it to end, or choose another --out")


def is_run(folder: Path) -> bool:
    """Whether unitkit created ``folder`` as a run directory."""
    return (folder / MARKER).is_file()


def has_checkpoint(folder: Path) -> bool:
    return bool(list_checkpoints(folder / "checkpoints"))


def check_start(run_dir: Path, resume: bool, overwrite: bool) -> Start:
    """Decide, before anything is built, how a run starts in ``run_dir``; nothing is changed on disk.

    ``"fresh"``: a new or empty folder, or a resumed run. ``"restart"``: a run directory without a checkpoint (a
    run that failed or was killed before its first one), started afresh without ``--overwrite`` since there is
    nothing in it to lose. ``"replace"``: ``--overwrite`` of a run with checkpoints.
    """
    if run_dir.is_dir() and in_use(run_dir):
        raise _in_use(run_dir)
    if resume or not run_dir.exists():
        return "fresh"
    if not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file, not a folder; choose another --out")
    if not any(run_dir.iterdir()):
        return "fresh"
    if not is_run(run_dir):
        raise UsageError(
            f"{run_dir} exists and is not a unitkit run directory (it has no {MARKER}); unitkit writes only into "
            "folders that are empty or its own: choose another --out"
        )
    if not has_checkpoint(run_dir):
        return "restart"
    if not overwrite:
        raise UsageError(
            f"run directory {run_dir} exists; pass --resume to continue it, --overwrite to replace it, "
            "or --out to choose another"
        )
    here = Path.cwd().resolve()
    if run_dir.resolve() in (here, *here.parents):
        raise UsageError(f"--overwrite: {run_dir} is the current directory or holds it; run unitkit from elsewhere")
    return "replace"


def claim(run_dir: Path, start: Start) -> None:
    """Make ``run_dir`` this run's, once its start-up checks passed: create it with its marker, locked until
    :func:`release`. A ``"restart"`` first clears what the failed run left; a ``"replace"`` moves the old run's
    entries aside into ``.previous-run/``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock(run_dir)  # first: nothing is cleared or moved under a run that another process is training
    if start == "restart":
        clear(run_dir)
    elif start == "replace":
        aside = run_dir / PREVIOUS
        remove(aside)  # left by a run killed between its first checkpoint and discarding it: already replaced
        aside.mkdir()
        for name in OWNED:
            if (run_dir / name).exists():
                (run_dir / name).rename(aside / name)
    version = metadata.version("unitkit")
    (run_dir / MARKER).write_text(json.dumps({"created_by": "unitkit", "version": version}) + "\n", encoding="utf-8")


def discard_previous(run_dir: Path) -> None:
    """Delete the run set aside by an ``--overwrite`` (called once the new run has saved a checkpoint)."""
    shutil.rmtree(run_dir / PREVIOUS, ignore_errors=True)


def restore(run_dir: Path) -> bool:
    """Put back the run an ``--overwrite`` set aside, if the new run has no checkpoint (it failed, or was killed,
    before its first): the new run's entries are deleted first. Returns whether a run was put back."""
    aside = run_dir / PREVIOUS
    if not aside.is_dir() or has_checkpoint(run_dir) or in_use(run_dir):
        return False
    for name in OWNED:
        if (aside / name).exists():
            remove(run_dir / name)
            (aside / name).rename(run_dir / name)
    remove(aside)
    return True


def clear(run_dir: Path) -> None:
    """Delete what unitkit wrote in ``run_dir`` (the entries of :data:`OWNED`), and nothing else."""
    for name in (*OWNED, PREVIOUS):
        remove(run_dir / name)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
