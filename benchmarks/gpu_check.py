"""One prepared check of unitkit on a GPU machine with no network: its CUDA tests, its speed against the authors'
code, and the paper's digits protocol, in under 10 minutes (PLANS below holds every cap).

    python benchmarks/gpu_check.py pack                  # fill .gpu/ (the wheels need the package index)
    python3 benchmarks/gpu_check.py run OUT              # on the GPU machine, .gpu carried beside the tree
    python benchmarks/gpu_check.py run OUT --dry-run     # the same end to end on the CPU, at toy sizes
    python3 benchmarks/gpu_check.py run OUT --phases speed --total 240   # one phase again, in less time

`pack` puts into the ignored folder .gpu/ what the GPU machine lacks beside the working tree: wheels of unitkit's
dependencies missing from its image, MNIST and USPS, and the authors' code with its timing harness (only ever
run, for the comparison). `run` then

  setup   installs those wheels and unitkit (editable), unpacks the digits, records the GPU and the software;
  tests   runs the CUDA test cases (tests/test_cuda.py, marker cuda);
  speed   times unitkit's training step (benchmarks/train_speed.py) and the authors' (their harness) at the
          reference configurations: seconds per iteration, images/s, peak memory, the ratios between them;
  digits  trains recipes/mnist2usps.toml and recipes/usps2mnist.toml side by side on the one GPU, each to its
          final evaluation or to its cap, where it gets SIGINT, saves a checkpoint and is reported as stopped;

and writes at most 8 files, flat, into OUT: summary.md, tests.jsonl, speed.jsonl, digits.jsonl, gpu_check.log
(everything the phases' processes printed), and the MNIST->USPS run's last sample grid and confusion matrices.
A failed phase does not stop the next; summary.md is rewritten after each phase, so a run killed from outside
still leaves one. The exit status is 1 when a phase failed (a phase stopped at its cap did not fail).

A dry run installs nothing (the development environment has it all), and runs the tests with
UNITKIT_CUDA_TESTS_ON=cpu, the benchmarks on the CPU and the digits recipes at toy widths for a few iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Ours:
    """benchmarks/train_speed.py at these configurations x switch sets, with extra recipe overrides last."""

    configs: tuple[str, ...]
    switches: tuple[str, ...]
    overrides: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"unitkit {'+'.join(self.switches)}"

    def command(self, check: Check) -> list[str]:
        return [sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--device", check.plan.device,
                *check.plan.speed_options, *(f"--only={c}" for c in self.configs),
                *(f"--switches={s}" for s in self.switches), *(f"--set={o}" for o in self.overrides)]  # fmt: skip

    def records(self, check: Check, finished: Finished) -> list[dict]:
        """train_speed's JSON lines: the host's first (it has the matmul ceiling), then one per measurement."""
        return [{"source": "host" if "machine" in line else "unitkit", **line} for line in json_objects(finished.lines)]


@dataclass(frozen=True)
class Authors:
    """The authors' training step at one image size and batch, timed by their harness (fp32: it has no other)."""

    size: int
    batch: int

    @property
    def label(self) -> str:
        return f"authors {self.size}x{self.size} b{self.batch}"

    def output(self, check: Check) -> Path:
        return check.work / f"authors-{self.size}-{self.batch}.jsonl"

    def command(self, check: Check) -> list[str]:
        reference = check.pack / "reference"
        return [sys.executable, str(reference / "bench_reference.py"), "--ref-dir", str(reference / "unit-master"),
                "--size", str(self.size), "--batch", str(self.batch), "--device", check.plan.device,
                *check.plan.authors_options, "--json", str(self.output(check))]  # fmt: skip

    def records(self, check: Check, finished: Finished) -> list[dict]:
        """The harness's JSON line, in train_speed's terms; its peak memory is the CUDA allocator's on a GPU, the
        process's RSS on a CPU, as train_speed reports unitkit's."""
        record = {"source": "authors", "image_size": self.size, "batch_size": self.batch, "switches": "fp32"}
        if finished.stopped:  # listed as cut short; it timed nothing to report
            return []
        if finished.returncode or not self.output(check).is_file():
            return [{**record, "error": "\n".join(finished.tail)}]
        found = json.loads(self.output(check).read_text(encoding="utf-8").splitlines()[-1])
        peak_mib = found["peak_cuda_mib"] if check.plan.device == "cuda" else found["peak_rss_mib"]
        return [{**record, "device": found["device"], "sec_per_iter_min": round(found["min_s"], 4),
                 "sec_per_iter_median": round(found["median_s"], 4),
                 "images_per_sec": round(2 * self.batch / found["median_s"], 2),
                 "peak_memory_gb": round(peak_mib * 2**20 / 1e9, 3), "timed_iterations": found["iters"]}]  # fmt: skip


@dataclass(frozen=True)
class Training:
    """A digits recipe trained by ``unitkit run`` with these overrides, stopped at ``cap_s`` (None: the phase's)."""

    recipe: str
    overrides: tuple[str, ...] = ()
    cap_s: int | None = None


@dataclass(frozen=True)
class Plan:
    """What each phase runs and how long it may take."""

    caps: dict[str, int]  # seconds from the phase's start to SIGINT, each cut short by the total
    total: int  # seconds for the whole run, graces included: every phase stops by then
    grace: int  # from SIGINT to SIGKILL: time for a training run to finish its iteration, save and exit
    device: str
    env: dict[str, str]  # for every child process
    tests_options: tuple[str, ...]  # pytest's, after -m cuda
    speed: tuple[Ours | Authors, ...]  # run in this order until the speed phase's cap
    speed_options: tuple[str, ...]  # train_speed.py's
    authors_options: tuple[str, ...]  # bench_reference.py's
    digits: tuple[Training, ...]  # trained side by side


REFERENCE_CONFIGS = ("ref-128-b1", "ref-256-b1", "ref-128-b8")  # the authors' harness runs the same three
TOY_DIGITS = ("model.encoder.width=4", "model.generator.width=4", "model.discriminator.width=4", "train.batch_size=8")
DRY_DIGITS = (*TOY_DIGITS, "train.device=cpu", "train.log_every=5", "train.eval_every=10", "train.sample_every=10",
              "train.checkpoint_every=10")  # fmt: skip
PLANS = {
    # At most 10 minutes in all: the total leaves half a minute to write the summary and copy OUT back.
    # The caps are upper bounds; the digits phase gets whatever the others leave of the total.
    "gpu": Plan(
        caps={"setup": 60, "tests": 120, "speed": 180, "digits": 600},
        total=560,
        grace=20,
        device="cuda",
        env={"OMP_NUM_THREADS": "4"},  # two training runs and their loaders share 16 cores
        tests_options=(),
        speed=(
            Ours((*REFERENCE_CONFIGS, "mnist2usps-b64"), ("fp32", "bf16-channels_last")),
            Authors(128, 1),
            Authors(256, 1),
            Authors(128, 8),
            Ours((*REFERENCE_CONFIGS, "mnist2usps-b64"), ("bf16-channels_last-compile",)),  # compiling takes long
        ),
        speed_options=("--warmup", "3", "--timed", "20"),
        authors_options=("--warmup", "3", "--iters", "20", "--no-flops"),
        # The recipes as they are, but for loading data in worker processes so the GPU does not wait for it:
        # each image is drawn by its own seed, so the training is the same (a setting --resume may change).
        digits=(Training("mnist2usps", ("train.num_workers=4",)), Training("usps2mnist", ("train.num_workers=4",))),
    ),
    # The same steps on the CPU at toy sizes. The reference configuration runs at 64x64, the authors' smallest.
    "dry-run": Plan(
        caps={"setup": 60, "tests": 600, "speed": 600, "digits": 300},
        total=1800,
        grace=60,  # on 2 shared CPU cores, a stopped run has taken over 20 s to save and exit
        device="cpu",
        env={},
        # The phase's plumbing needs a few tests, not the slowest on a CPU (compiling, FID's 2048x2048
        # eigendecompositions, a torchrun start): UNITKIT_CUDA_TESTS_ON=cpu pytest -m cuda runs them all.
        tests_options=("-k", "not compile and not translate_and_evaluate and not torchrun_with_one_process"),
        speed=(
            Ours(("ref-128-b1",), ("fp32",), ("data.image_size=64",)),
            Authors(64, 1),
            Ours(("mnist2usps-b64",), ("fp32", "bf16-channels_last"), TOY_DIGITS),
        ),
        speed_options=("--threads", "1", "--warmup", "0", "--timed", "1"),
        authors_options=("--threads", "1", "--warmup", "0", "--iters", "1", "--no-flops"),
        digits=(
            Training("mnist2usps", (*DRY_DIGITS, "train.iterations=20")),
            # Stopped at its cap, as a GPU run that runs out of time is.
            Training("usps2mnist", (*DRY_DIGITS, "train.iterations=100000"), cap_s=30),
        ),
    ),
}

PHASES = ("tests", "speed", "digits")  # after setup, which always runs
PACK_DIR = ".gpu"
DATA_ARCHIVE = "digits.tar.gz"
DIGIT_SETS = ("mnist", "usps")  # the folders of UNITKIT_DATA that the digits recipes read
REFERENCE_ENV = "UNITKIT_REFERENCE"  # the folder holding bench_reference.py and unit-master/
CUDA_TESTS = "tests/test_cuda.py"
CUDA_TESTS_ENV = "UNITKIT_CUDA_TESTS_ON"  # "cpu": the cuda-marked tests run on the CPU
# unitkit's dependencies that the GPU image lacks, and typing-extensions, which pydantic may need newer than the
# image's; setuptools too, since `pip install -e .` there cannot fetch a build backend and pyproject's
# `license = "MIT"` needs setuptools >= 77. Carried at the versions installed where `pack` runs.
CARRIED_PACKAGES = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
                    "tomli-w", "setuptools")  # fmt: skip
DEVICE_PYTHON = "3.12"
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
TRAVEL_LIMIT = 64 * 2**20  # the working tree and the carried folders together
MAX_FILE_BYTES = 16 * 2**20  # each file that comes back from OUT (at most 8 of them)
OUTPUT_FILES = ("summary.md", "tests.jsonl", "speed.jsonl", "digits.jsonl", "gpu_check.log", "digits_samples.png",
                "digits_confusion.png")  # fmt: skip
TARGET_METRIC = "accuracy_b"  # the target domain's test accuracy, the paper's figure (docs/metrics.md)
SPEEDUP_GOAL = 2.0  # at least the authors' iterations/s times this, at no more peak memory
TAIL_LINES = 30
PASSED, STOPPED, FAILED = "passed", "stopped at its cap", "failed"
FINISHED = "finished"  # a training run that reached its final evaluation


# ------------------------------------------------------------------------------------------ child processes


class Log:
    """What the check and its child processes print: to stdout as it comes, and to gpu_check.log up to the size
    that can come back (then only to stdout)."""

    FULL = "[gpu_check] the log is full: the rest went to stdout only\n"

    def __init__(self, path: Path) -> None:
        self.file = path.open("w", encoding="utf-8")
        self.room = MAX_FILE_BYTES - len(self.FULL)
        self.lock = threading.Lock()
        self.started = time.perf_counter()

    def write(self, text: str) -> None:
        """Write ``text`` after the seconds since the start."""
        line = f"{time.perf_counter() - self.started:6.1f} {text}\n"
        with self.lock:
            print(line, end="", flush=True)
            size = len(line.encode())
            if size <= self.room:
                self.file.write(line)
                self.file.flush()  # a run killed from outside still leaves its log
            elif self.room >= 0:
                self.file.write(self.FULL)
                self.file.flush()
            self.room -= size

    def pump(self, stream: IO[str], name: str, lines: list[str]) -> None:
        """Copy a child's output, line by line, into ``lines`` and the log."""
        for line in stream:
            lines.append(line.rstrip("\n"))
            self.write(f"[{name}] {lines[-1]}")

    def close(self) -> None:
        self.file.close()


@dataclass
class Finished:
    """How a child process ended: its exit status, wall seconds, whether it was stopped at its cap, its output."""

    returncode: int
    seconds: float
    stopped: bool
    lines: list[str]

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.stopped

    @property
    def tail(self) -> list[str]:
        """The end of its output, for a report of what went wrong."""
        return self.lines[-TAIL_LINES:]


def run_children(
    commands: dict[str, tuple[list[str], float]], env: dict[str, str], log: Log, grace: float
) -> dict[str, Finished]:
    """Run each named (command, stop time) side by side, their output into ``log``.

    A command still running at its stop time (a time.perf_counter() value) gets SIGINT: unitkit then finishes
    its iteration and saves a checkpoint, Python programs raise KeyboardInterrupt. Only the command's own process
    gets it: a training run's data-loading workers would die of it before the run has saved. ``grace`` s later, or
    once the command ends (or this function is left by an exception), whatever is left of its process group is
    killed. The groups stay in the check's terminal session, so whatever ends that session ends them too.
    """
    started = time.perf_counter()
    processes, lines, pumps, ended, stopped, killed = {}, {}, [], {}, set(), set()
    try:
        for name, (command, _) in commands.items():
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, errors="replace", process_group=0)  # fmt: skip
            processes[name], lines[name] = process, []
            # A daemon: a grandchild that outlives its group's kill may hold the pipe open.
            pumps.append(threading.Thread(target=log.pump, args=(process.stdout, name, lines[name]), daemon=True))
            pumps[-1].start()
        while len(ended) < len(processes):
            now = time.perf_counter()
            for name, process in processes.items():
                if name in ended:
                    continue
                if process.poll() is not None:
                    ended[name] = now
                elif name not in stopped and now >= commands[name][1]:
                    log.write(f"[{name}] its cap is reached: SIGINT")
                    process.send_signal(signal.SIGINT)
                    stopped.add(name)
                elif name not in killed and name in stopped and now >= commands[name][1] + grace:
                    log.write(f"[{name}] still running {grace:.0f} s after SIGINT: SIGKILL")
                    os.killpg(process.pid, signal.SIGKILL)
                    killed.add(name)
            time.sleep(0.2)
    finally:
        for process in processes.values():
            with suppress(ProcessLookupError):  # nothing of the group is left
                os.killpg(process.pid, signal.SIGKILL)
    for pump in pumps:
        pump.join(timeout=10)
    return {
        name: Finished(process.returncode, ended[name] - started, name in stopped, lines[name])
        for name, process in processes.items()
    }


# --------------------------------------------------------------------------------------------------- the run


@dataclass
class PhaseReport:
    """What a phase found: its result, a line on what failed or was cut, its part of summary.md, and the end of
    its processes' output (shown when it failed)."""

    status: str
    note: str = ""
    section: str = ""
    tail: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Check:
    """One run of the check: its plan, folders, child environment, clock and what its phases found."""

    plan: Plan
    out: Path
    pack: Path  # what `pack` filled
    work: Path  # scratch space, removed at the end
    dry_run: bool
    log: Log
    deadline: float  # time.perf_counter() by which every phase has sent its SIGINT
    env: dict[str, str] = field(default_factory=dict)
    environment: list[tuple[str, str]] = field(default_factory=list)
    reports: dict[str, PhaseReport] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.plan.env}
        self.put_on_path(ROOT)  # unitkit from this checkout, installed or not

    def put_on_path(self, folder: Path) -> None:
        """Let this process and its children import from ``folder`` before anything installed."""
        sys.path.insert(0, str(folder))
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), self.env.get("PYTHONPATH")]))

    def until(self, phase: str) -> float:
        """When ``phase``, starting now, must stop."""
        return min(time.perf_counter() + self.plan.caps[phase], self.deadline)

    def run_one(self, name: str, command: list[str], until: float, env: dict[str, str] | None = None) -> Finished:
        return run_children({name: (command, until)}, env or self.env, self.log, self.plan.grace)[name]


def setup_phase(check: Check) -> PhaseReport:
    """Install what unitkit needs (not in a dry run: the development environment has it all, and the wheels are
    built for the GPU machine's Python), unpack the digits, and record the environment."""
    failure = None if check.dry_run else install(check)
    with tarfile.open(check.pack / "data" / DATA_ARCHIVE) as archive:
        archive.extractall(check.work / "data", filter="data")
    check.env["UNITKIT_DATA"] = str(check.work / "data")
    check.environment = environment_rows(check)
    return failure or PhaseReport(PASSED)


def install(check: Check) -> PhaseReport | None:
    """Install the carried wheels into a folder put on the path, then unitkit, editable; what failed, if any."""
    wheels = sorted((check.pack / "wheels").glob("*.whl"))
    if not wheels:
        return PhaseReport(FAILED, f"no wheels in {check.pack / 'wheels'}: run `gpu_check.py pack` first")
    if platform.python_version().rsplit(".", 1)[0] != DEVICE_PYTHON:  # pydantic-core's wheel is built per version
        return PhaseReport(FAILED, f"the wheels are for Python {DEVICE_PYTHON}, this is {platform.python_version()}:"
                                   " set DEVICE_PYTHON and pack again")  # fmt: skip
    site = check.work / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir"]
    until = check.until("setup")
    installed = check.run_one("pip", [*pip, "--no-compile", "--target", str(site), *map(str, wheels)], until)
    check.put_on_path(site)  # before the editable install, which builds with the carried setuptools
    if installed.ok:
        installed = check.run_one("pip", [*pip, "--no-build-isolation", "-e", str(ROOT)], until)
    return None if installed.ok else PhaseReport(FAILED, "pip install failed", tail=installed.tail)


def environment_rows(check: Check) -> list[tuple[str, str]]:
    """The GPU, the software and the CPU the check ran on, as (what, value) rows."""
    import torch

    smi = shutil.which("nvidia-smi")
    query = ["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    gpu = subprocess.run([smi, *query], capture_output=True, text=True).stdout.strip() if smi else "none"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return [
        ("mode", "dry run: CPU, toy sizes" if check.dry_run else "GPU"),
        ("GPU (name, memory, driver)", gpu),
        ("torch", f"{torch.__version__}, CUDA {torch.version.cuda}"),
        ("Python", platform.python_version()),
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("carried packages", ", ".join(f"{n} {v}" for n in CARRIED_PACKAGES if (v := version_of(n)))),
    ]


def version_of(package: str) -> str | None:
    """The version of ``package`` that imports here, if any."""
    with suppress(metadata.PackageNotFoundError):
        return metadata.version(package)
    return None


def json_objects(lines: Iterable[str]) -> list[dict]:
    """The lines that are JSON objects, decoded; the others (warnings, progress) are left out."""
    objects = []
    for line in lines:
        with suppress(json.JSONDecodeError):
            found = json.loads(line) if line.startswith("{") else None
            if isinstance(found, dict):
                objects.append(found)
    return objects


def tests_phase(check: Check) -> PhaseReport:
    """The test cases marked cuda, on the GPU (in a dry run, on the CPU); one JSON line per test."""
    junit = check.work / "tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", *check.plan.tests_options, CUDA_TESTS, "-p",
               "no:cacheprovider", "-q", "-rA", f"--junitxml={junit}"]  # fmt: skip
    env = {**check.env, CUDA_TESTS_ENV: "cpu"} if check.dry_run else check.env
    finished = check.run_one("tests", command, check.until("tests"), env)
    records = junit_records(junit) if junit.is_file() else []
    write_jsonl(check.out / "tests.jsonl", records)
    tally = Counter(r["outcome"] for r in records)
    counts = ", ".join(f"{n} {outcome}" for outcome, n in tally.items()) or "no test ran"
    rows = [(r["name"], r["outcome"], f"{r['seconds']:.2f}", r.get("message", "")) for r in records]
    section = f"{counts}\n\n" + table(("test", "outcome", "seconds", "message"), rows)
    if finished.stopped:
        return PhaseReport(STOPPED, f"cut at its cap after {len(records)} tests", section, finished.tail)
    if finished.returncode or not tally["passed"]:  # all skipped: the GPU was not seen
        return PhaseReport(FAILED, f"pytest exit {finished.returncode}: {counts}", section, finished.tail)
    return PhaseReport(PASSED, "", section)


def junit_records(path: Path) -> list[dict]:
    """Name, outcome, seconds (and the first line of a failure's or skip's message) of each test in a JUnit XML."""
    outcomes = {"failure": "failed", "error": "error", "skipped": "skipped"}
    records = []
    for case in ElementTree.parse(path).iter("testcase"):
        if not case.get("name"):  # an interrupted run ends with an empty one
            continue
        record = {"name": f"{case.get('classname')}::{case.get('name')}", "outcome": "passed",
                  "seconds": round(float(case.get("time") or 0), 3)}  # fmt: skip
        for child in case:
            if child.tag in outcomes:
                message = (child.get("message") or child.text or "").strip().splitlines()
                record |= {"outcome": outcomes[child.tag], "message": message[0][:300] if message else ""}
        records.append(record)
    return records


def speed_phase(check: Check) -> PhaseReport:
    """unitkit's and the authors' training steps, one step of the plan after the other until the cap; each unitkit
    figure at a configuration the authors' code also ran gets its speed-up and memory ratio."""
    until = check.until("speed")
    records, failed, cut, tails = [], [], [], []
    for step in check.plan.speed:
        if time.perf_counter() >= until:
            cut.append(step.label)
            continue
        finished = check.run_one(step.label, step.command(check), until)
        found = step.records(check, finished)
        records += found
        if finished.stopped:
            cut.append(step.label)
        elif finished.returncode or any("error" in r for r in found):
            failed.append(step.label)
            tails += finished.tail
    compare_with_authors(records)
    write_jsonl(check.out / "speed.jsonl", records)
    section = speed_section(records, cut)
    if failed:
        return PhaseReport(FAILED, f"failed: {', '.join(failed)}", section, tails[-TAIL_LINES:])
    if cut:
        return PhaseReport(STOPPED, f"not (fully) run: {', '.join(cut)}", section)
    return PhaseReport(PASSED, "", section)


def compare_with_authors(records: list[dict]) -> None:
    """Add the speed-up (the authors' seconds per iteration over unitkit's) and the peak-memory ratio (unitkit's
    over the authors') to each unitkit figure at an image size and batch the authors' code ran."""
    authors = {(r["image_size"], r["batch_size"]): r for r in records if r["source"] == "authors" and "error" not in r}
    for record in records:
        theirs = authors.get((record.get("image_size"), record.get("batch_size")))
        if record["source"] == "unitkit" and theirs and "error" not in record:
            record["speedup_vs_authors"] = round(theirs["sec_per_iter_median"] / record["sec_per_iter_median"], 2)
            record["memory_vs_authors"] = round(record["peak_memory_gb"] / theirs["peak_memory_gb"], 2)


SPEED_HEADER = ("code", "config", "image", "batch", "switches", "s/iter median (min)", "images/s", "peak memory GB",
                "GFLOP/iter", "speed-up vs authors", "memory vs authors", f"{SPEEDUP_GOAL:g}× at ≤ memory")  # fmt: skip


def speed_row(r: dict) -> tuple[object, ...]:
    """One measurement as a row of SPEED_HEADER."""
    compared = "speedup_vs_authors" in r
    goal = compared and r["speedup_vs_authors"] >= SPEEDUP_GOAL and r["memory_vs_authors"] <= 1
    return (r["source"], r.get("config", ""), f"{r['image_size']}x{r['image_size']}", r["batch_size"], r["switches"],
            f"{r['sec_per_iter_median']:.4g} ({r['sec_per_iter_min']:.4g})", r["images_per_sec"], r["peak_memory_gb"],
            r.get("gflop_per_iter", ""), r.get("speedup_vs_authors", ""), r.get("memory_vs_authors", ""),
            ("met" if goal else "not met") if compared else "")  # fmt: skip


def speed_section(records: list[dict], cut: list[str]) -> str:
    """The speed part of summary.md: the ceilings, a row per measurement (unitkit's beside the authors'), the errors
    and what the cap cut."""
    ceilings = [f"{r['matmul_fp32_gflops']:,}" for r in records if r["source"] == "host"]
    lines = [f"fp32 matmul ceiling, measured by each train_speed.py run: {', '.join(ceilings)} GFLOP/s"]
    measured = [r for r in records if "sec_per_iter_median" in r]
    measured.sort(key=lambda r: (r["image_size"], r["batch_size"]))
    lines += ["", table(SPEED_HEADER, map(speed_row, measured))]
    for r in records:
        if "error" in r:
            lines.append(f"- error, {r['source']} {r.get('config', r.get('image_size'))} {r['switches']}: "
                         f"`{(r['error'].splitlines() or ['?'])[-1]}`")  # fmt: skip
    lines += [f"- not (fully) run, out of time: {label}" for label in cut]
    return "\n".join(lines)


def digits_phase(check: Check) -> PhaseReport:
    """Both digits recipes side by side, each to its final evaluation or its cap; the first one's last sample grid
    and confusion matrices come back."""
    until = check.until("digits")
    runs = check.work / "runs"
    commands = {}
    for t in check.plan.digits:
        command = [sys.executable, "-m", "unitkit", "run", f"recipes/{t.recipe}.toml", "--out", str(runs / t.recipe),
                   *(f"--set={o}" for o in t.overrides)]  # fmt: skip
        commands[t.recipe] = (command, min(until, time.perf_counter() + t.cap_s) if t.cap_s else until)
    finished = run_children(commands, check.env, check.log, check.plan.grace)
    records = [digits_record(t, finished[t.recipe], runs / t.recipe) for t in check.plan.digits]
    write_jsonl(check.out / "digits.jsonl", records)
    shown = runs / check.plan.digits[0].recipe
    for grid in sorted((shown / "samples").glob("*.png"))[-1:]:
        shutil.copyfile(grid, check.out / "digits_samples.png")
    if (shown / "confusion.png").is_file():
        shutil.copyfile(shown / "confusion.png", check.out / "digits_confusion.png")
    section = digits_section(records)
    if failed := [r["recipe"] for r in records if r["status"] not in (FINISHED, STOPPED)]:
        tails = [line for name in failed for line in finished[name].tail]
        return PhaseReport(FAILED, f"failed: {', '.join(failed)}", section, tails)
    if stopped := [r["recipe"] for r in records if r["status"] == STOPPED]:
        return PhaseReport(STOPPED, f"stopped before the end: {', '.join(stopped)}", section)
    return PhaseReport(PASSED, "", section)


def digits_record(training: Training, finished: Finished, run_dir: Path) -> dict:
    """How far a training run got and its target accuracy: at its last evaluation (the final one for a finished
    run) and the best of its evaluations, as the run logged them."""
    from unitkit.checkpoint import checkpoint_step, list_checkpoints
    from unitkit.evaluate import best_logged
    from unitkit.report import read_log

    log = read_log(run_dir / "log.jsonl")
    evaluations = [r for r in log if f"eval/{TARGET_METRIC}" in r]
    last = {k.removeprefix("eval/"): v for k, v in (evaluations or [{}])[-1].items() if k.startswith("eval/")}
    recipe = run_dir / "recipe.toml"
    planned = tomllib.loads(recipe.read_text(encoding="utf-8"))["train"]["iterations"] if recipe.is_file() else None
    done = finished.returncode == 0 and (run_dir / "evaluation.json").is_file()
    saved = [checkpoint_step(p) for p in list_checkpoints(run_dir / "checkpoints")]
    best = best_logged(run_dir / "log.jsonl")
    return {
        "recipe": training.recipe,
        "status": FINISHED if done else STOPPED if finished.stopped else f"{FAILED} (exit {finished.returncode})",
        "iterations": planned if done else max([0, *saved, *(r["step"] for r in log)]),
        "iterations_planned": planned,
        "wall_s": round(finished.seconds, 1),
        "last_evaluation_step": evaluations[-1]["step"] if evaluations else None,
        TARGET_METRIC: last.get(TARGET_METRIC),
        f"best_{TARGET_METRIC}": best.get(f"best_{TARGET_METRIC}"),
        f"best_{TARGET_METRIC}_step": best.get(f"best_{TARGET_METRIC}_step"),
        "metrics_at_last_evaluation": last,
        "evaluations": [[r["step"], r[f"eval/{TARGET_METRIC}"]] for r in evaluations],
        "overrides": list(training.overrides),
    }


def digits_section(records: list[dict]) -> str:
    """The digits part of summary.md: a row per training run, and the overrides each one ran with."""

    def at(value: float | None, step: int | None) -> str:
        return "" if value is None else f"{value:.4f} (iteration {step:,})"

    best = f"best_{TARGET_METRIC}"
    rows = [(r["recipe"], r["status"], f"{r['iterations']:,} of {r['iterations_planned'] or 0:,}",
             at(r[TARGET_METRIC], r["last_evaluation_step"]), at(r[best], r[f"{best}_step"]),
             *(f"{r['metrics_at_last_evaluation'].get(m, float('nan')):.4f}" for m in ("accuracy_a", "accuracy_b2a")),
             f"{r['wall_s']:.0f}") for r in records]  # fmt: skip
    header = ("recipe", "status", "iterations", f"target {TARGET_METRIC}, last evaluation", "best evaluation",
              "accuracy_a", "accuracy_b2a", "wall s")  # fmt: skip
    overrides = [f"- {r['recipe']}: " + (" ".join(f"`--set {o}`" for o in r["overrides"]) or "none") for r in records]
    return "\n".join([table(header, rows), "", "Overrides of the recipes:", *overrides, "",
                      "A stopped run's figures are from its last evaluation before the cap, not from the end of the "
                      "protocol (docs/results/digits.md)."])  # fmt: skip


PHASE_FUNCTIONS: dict[str, Callable[[Check], PhaseReport]] = {
    "setup": setup_phase, "tests": tests_phase, "speed": speed_phase, "digits": digits_phase,
}  # fmt: skip
SECTIONS = {"tests": "Tests", "speed": "Speed", "digits": "Digits"}


def run_check(out: Path, pack: Path, dry_run: bool, phases: list[str], total: int | None) -> int:
    """Set up, run the chosen phases and write their results to ``out``; 1 when a phase failed, else 0."""
    plan = PLANS["dry-run" if dry_run else "gpu"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds, so the child processes are ended too
    # A process started in the background may ignore SIGINT, and its children would inherit that and ignore the cap.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log = Log(out / "gpu_check.log")
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        deadline = started + (total or plan.total) - plan.grace
        check = Check(plan, out.resolve(), pack.resolve(), Path(work), dry_run, log, deadline)
        for name in ("setup", *phases):
            log.write(f"[gpu_check] {name}: at most {check.until(name) - time.perf_counter():.0f} s")
            phase_started = time.perf_counter()
            try:
                report = PHASE_FUNCTIONS[name](check)
            except Exception:  # the check's own error: the later phases still run
                report = PhaseReport(FAILED, "gpu_check.py raised", tail=traceback.format_exc().splitlines())
            report.seconds = time.perf_counter() - phase_started
            check.reports[name] = report
            log.write(f"[gpu_check] {name}: {report.status} in {report.seconds:.0f} s {report.note}")
            write_summary(check)
    log.close()
    print((out / "summary.md").read_text(encoding="utf-8"), flush=True)  # last: a runner that keeps the tail shows it
    return int(any(r.status == FAILED for r in check.reports.values()))


def write_summary(check: Check) -> None:
    """summary.md: each phase's result, the environment, then each phase's section (and the end of a failed or
    stopped phase's output)."""
    rows = [(name, r.status, f"{r.seconds:.0f}", r.note) for name, r in check.reports.items()]
    lines = ["# unitkit GPU check", "", table(("phase", "result", "seconds", "note"), rows), "",
             "## Environment", "", table(("", "value"), check.environment)]  # fmt: skip
    for name, title in SECTIONS.items():
        report = check.reports.get(name)
        lines += ["", f"## {title}", "", report.section if report and report.section else "Not run."]
    for name, report in check.reports.items():
        if report.status != PASSED and report.tail:
            lines += ["", f"## The end of the {name} phase's output", "", "```", *report.tail, "```"]
    (check.out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def table(header: Iterable[object], rows: Iterable[Iterable[object]]) -> str:
    """A markdown table."""
    header = [str(h) for h in header]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


# ------------------------------------------------------------------------------------------------- packing


def reference_root() -> Path:
    """The folder of the authors' code and its harness: $UNITKIT_REFERENCE, else shared/reference beside the
    checkout."""
    return Path(os.environ.get(REFERENCE_ENV) or ROOT.parent / "shared" / "reference").expanduser()


def pack(into: Path, wheels: bool) -> None:
    """Fill ``into`` with what the GPU machine needs beside the working tree, and print the sizes."""
    into.mkdir(parents=True, exist_ok=True)
    parts = {"data": pack_data, "reference": pack_reference, **({"wheels": pack_wheels} if wheels else {})}
    sizes = {}
    for name, fill in parts.items():
        shutil.rmtree(into / name, ignore_errors=True)  # nothing stale: two versions of a wheel stop the install
        (into / name).mkdir()
        fill(into / name)
        sizes[name] = folder_bytes(into / name)
    packed, tree = folder_bytes(into), travelling_tree_bytes()
    print(", ".join(f"{name} {mib(size)}" for name, size in sizes.items()) + f"; {into}: {mib(packed)} in all")
    if tree is None:
        print(f"not a git checkout: the size of the working tree that travels beside {into.name} is unknown")
        return
    print(f"working tree that travels: {mib(tree)}; with {into.name}: {mib(tree + packed)} of {mib(TRAVEL_LIMIT)}")
    if tree + packed > TRAVEL_LIMIT:
        raise SystemExit(f"pack: {into} and the working tree exceed {mib(TRAVEL_LIMIT)}; the device call would fail")


def pack_data(target: Path) -> None:
    """MNIST and USPS, as unitkit's digits datasets read them, in one compressed archive."""
    from unitkit.recipe import data_root

    root = data_root()
    if missing := [str(root / name) for name in DIGIT_SETS if not (root / name).is_dir()]:
        raise SystemExit(f"pack: {', '.join(missing)} not found; set UNITKIT_DATA to the folder of real datasets")
    with tarfile.open(target / DATA_ARCHIVE, "w:gz") as archive:
        for name in DIGIT_SETS:
            archive.add(root / name, arcname=name, filter=writable)


def writable(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """The shared copy is read-only; the unpacked one must be removable."""
    member.mode = 0o755 if member.isdir() else 0o644
    return member


def pack_reference(target: Path) -> None:
    """The authors' harness and code, copied file by file (not their read-only modes: the harness writes
    __pycache__ beside the code)."""
    source = reference_root()
    harness, code = source / "bench_reference.py", source / "unit-master"
    if not (harness.is_file() and code.is_dir()):
        raise SystemExit(f"pack: {harness} and {code} not found; set {REFERENCE_ENV} to the folder that holds them")
    for path in [harness, *sorted(code.rglob("*"))]:
        if path.is_file() and "__pycache__" not in path.parts:
            copy = target / path.relative_to(source)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)


def pack_wheels(target: Path) -> None:
    """Wheels of CARRIED_PACKAGES at the versions installed here, for the GPU machine's Python on x86-64 Linux."""
    pinned = [f"{name}=={metadata.version(name)}" for name in CARRIED_PACKAGES]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    DEVICE_PYTHON, "--implementation", "cp", *(f"--platform={p}" for p in WHEEL_PLATFORMS),
                    "-d", str(target), *pinned], check=True)  # fmt: skip


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def travelling_tree_bytes() -> int | None:
    """The size of the tracked files and the untracked ones git does not ignore: what travels without being
    carried. None outside a git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((ROOT / name).lstat().st_size for name in listed if name and (ROOT / name).exists())


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="fill the folder the GPU machine needs beside the working tree")
    packing.add_argument("--into", type=Path, default=ROOT / PACK_DIR, help=f"[default: {PACK_DIR}]")
    packing.add_argument("--no-wheels", action="store_true", help="leave out the wheels (they need the index)")
    running = commands.add_parser("run", help="run the check and write its results into OUT")
    running.add_argument("out", type=Path, metavar="OUT")
    running.add_argument("--dry-run", action="store_true", help="on the CPU at toy sizes, installing nothing")
    running.add_argument("--pack-dir", type=Path, default=ROOT / PACK_DIR, help=f"[default: {PACK_DIR}]")
    running.add_argument("--phases", default=",".join(PHASES), help="comma-separated, after setup [default: all]")
    running.add_argument("--total", type=int, help="seconds for the whole run [default: the plan's]")
    args = parser.parse_args()
    if args.command == "pack":
        sys.path.insert(0, str(ROOT))  # unitkit from this checkout, installed or not
        pack(args.into, wheels=not args.no_wheels)
        return
    phases = [p for p in args.phases.split(",") if p]
    if unknown := set(phases) - set(PHASES):
        parser.error(f"--phases: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    sys.exit(run_check(args.out, args.pack_dir, args.dry_run, phases, args.total))


if __name__ == "__main__":
    main()
