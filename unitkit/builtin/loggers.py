"""Loggers: where a run's losses go."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from unitkit import Logger


class JsonlLogger(Logger):
    """One JSON object per logged step in RUN_DIR/log.jsonl (flushed per line, so a crash loses nothing)."""

    def __init__(self, run_dir: Path, filename: str = "log.jsonl") -> None:
        self.path = Path(run_dir) / filename
        self._file = self.path.open("a", encoding="utf-8")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        record = {"step": step, "time": round(time.time(), 3), **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_image(self, step: int, name: str, path: str) -> None:
        self._file.write(json.dumps({"step": step, "image": name, "path": str(path)}) + "\n")
        self._file.flush()

    def rewind(self, step: int) -> None:
        self._file.close()
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines(keepends=True)
                if _step_of(line) <= step]  # fmt: skip
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text("".join(kept), encoding="utf-8")
        temporary.replace(self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._file.close()


def _step_of(line: str) -> float:
    """The step of a log line; infinite for a torn line (a crash mid-write, no newline), which is dropped."""
    if not line.endswith("\n"):
        return math.inf
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
