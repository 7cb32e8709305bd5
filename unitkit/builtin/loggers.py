"""Loggers: where a run's losses go."""

from __future__ import annotations

import json
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

    def close(self) -> None:
        self._file.close()
