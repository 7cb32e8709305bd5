"""Run the variants of a sweep side by side: one per GPU, or several CPU jobs that split the cores.

Each variant trains in its own ``unitkit run --ablation NAME`` process, so CUDA contexts, thread pools and
crashes stay apart; its output goes to ``SWEEP_DIR/NAME.log``. The sweep waits for all of them and returns one
row per finished variant for the results table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from unitkit.checkpoint import checkpoint_step, list_checkpoints, read_seconds
from unitkit.errors import CheckpointError


def job_devices(device: str, jobs: int, cuda_count: int) -> list[str]:
    """The ``train.device`` of each parallel slot; no slots (an empty list) means run in this process.

    ``jobs`` = 0 picks for the machine: one slot per GPU when ``device`` leaves the GPU open ("auto" or "cuda")
    and there are several, else one. Open-GPU slots go round the GPUs, ``cuda:(k % cuda_count)``; any other
    device ("cpu", a pinned "cuda:N") is every slot's, and a device the machine lacks is the run's error to
    report, not a reason to fall back.
    """
    open_gpu = device in ("auto", "cuda") and cuda_count > 0
    if jobs == 0:
        jobs = cuda_count if open_gpu else 1
    if jobs <= 1:
        return []
    return [f"cuda:{k % cuda_count}" for k in range(jobs)] if open_gpu else [device] * jobs


@dataclass
class Variant:
    """One variant of the sweep: its ablation name ("" for the base recipe) and its run directory."""

    ablation: str
    run_dir: Path
    resume: bool = False
    #: Replace the run in ``run_dir`` (``--overwrite``); one without a checkpoint starts afresh without it.
    overwrite: bool = False
    process: subprocess.Popen | None = field(default=None, repr=False)
    started: float = 0.0
    log: Path | None = None

    @property
    def label(self) -> str:
        return self.ablation or "base"


def run_parallel(
    recipe: Path,
    overrides: tuple[str, ...],
    variants: list[Variant],
    devices: list[str],
    sweep_dir: Path,
    console: Console,
) -> tuple[list[dict], list[str], str]:
    """Train ``variants`` with at most ``len(devices)`` at a time, slot k on ``devices[k]``.

    Returns the result rows of the finished variants (as the sequential sweep makes them), the labels of the
    variants that failed, and the signal name ("SIGINT"/"SIGTERM") if the sweep was interrupted; an interrupt
    reaches every running variant, which saves a checkpoint as a single run does.
    """
    sweep_dir.mkdir(parents=True, exist_ok=True)  # for the variants' logs
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    waiting, running, rows, failed = list(variants), {}, [], []
    interrupted = ""

    def stop(signum: int, _frame: object) -> None:
        # The children run in their own sessions (a terminal's Ctrl-C reaches only this process), so each
        # signal is passed on once: a second Ctrl-C makes them leave at once, as it does a single run.
        nonlocal interrupted
        interrupted = signal.Signals(signum).name
        for variant in running.values():
            variant.process.send_signal(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        while waiting or running:
            free = [slot for slot in range(len(devices)) if slot not in running]
            while waiting and free and not interrupted:
                slot, variant = free.pop(0), waiting.pop(0)
                _start(recipe, overrides, variant, devices[slot], threads, sweep_dir)
                running[slot] = variant
                where = f"{devices[slot]} (log: {variant.log})"
                console.print(f"started {escape(variant.label)} on {escape(where)}", highlight=False)
            time.sleep(0.5)
            for slot, variant in list(running.items()):
                code = variant.process.poll()
                if code is None:
                    continue
                del running[slot]
                seconds = time.perf_counter() - variant.started
                if code == 0:
                    rows.append(result_row(variant.label, variant.run_dir))
                    console.print(f"[green]done[/] {escape(variant.label)} in {seconds:.0f} s", highlight=False)
                elif code in (130, 143) and interrupted:
                    console.print(f"[yellow]interrupted[/] {escape(variant.label)}", highlight=False)
                else:
                    failed.append(variant.label)
                    tail = variant.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
                    console.print(f"[red]failed[/] {escape(variant.label)} (exit {code}):", highlight=False)
                    for line in tail:
                        console.print(f"  {escape(line)}", highlight=False)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    order = {v.label: i for i, v in enumerate(variants)}
    return sorted(rows, key=lambda row: order[row["variant"]]), failed, interrupted


def _start(recipe: Path, overrides: tuple[str, ...], variant: Variant, device: str, threads: int, sweep_dir: Path):
    env = dict(os.environ)
    if device.startswith("cuda:"):
        # The child sees its GPU alone, so nothing it does touches GPU 0 (CUDA's default device).
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        index = int(device.split(":")[1])
        env["CUDA_VISIBLE_DEVICES"] = visible[index] if index < len(visible) else str(index)
        device = "cuda"
    elif device != "cuda":  # on CPU the slots share the cores instead of each starting a thread per core
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "unitkit", "run", str(recipe), "--out", str(variant.run_dir), "--quiet"]
    command += [arg for override in overrides for arg in ("--set", override)]
    command += ["--set", f"train.device={device}"]
    command += ["--ablation", variant.ablation] if variant.ablation else []
    command += ["--resume"] if variant.resume else ["--overwrite"] if variant.overwrite else []
    variant.log = sweep_dir / f"{variant.label}.log"
    with variant.log.open("a" if variant.resume else "w", encoding="utf-8") as log:  # a resumed variant adds
        variant.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    variant.started = time.perf_counter()


def result_row(variant: str, run_dir: Path) -> dict:
    """A variant's row of the sweep's results table: its last checkpoint's iteration and training wall seconds
    (over the run and its resumptions; setup and the final evaluation left out), then its evaluation.json.

    Seconds are None (an empty cell) where unknown: an old or unreadable checkpoint, which must not stop the
    table of the others.
    """
    last = list_checkpoints(run_dir / "checkpoints")
    iterations = checkpoint_step(last[-1]) if last else 0
    try:
        seconds = read_seconds(last[-1]) if last else None
    except CheckpointError:
        seconds = None
    seconds = None if seconds is None else round(seconds)
    evaluation = run_dir / "evaluation.json"
    metrics = json.loads(evaluation.read_text(encoding="utf-8")) if evaluation.exists() else {}
    return {"variant": variant, "iterations": iterations, "seconds": seconds, **metrics}
