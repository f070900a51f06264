"""Everything-mode job records and the local ``JobStore``: this process's jobs, in memory, bounded."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from typing import Any

QUEUED, RUNNING, DONE, ERROR, CANCELLED = "queued", "running", "done", "error", "cancelled"
FINISHED = (DONE, ERROR, CANCELLED)


class TooManyJobs(RuntimeError):
    """Every remembered job is still queued or running."""


@dataclasses.dataclass
class EverythingJob:
    """One job's public state (what a poll answers); plain data, so a shared store can keep it."""

    job_id: str
    image_id: str
    params: dict[str, Any]
    status: str = QUEUED
    progress: float = 0.0
    message: str | None = None
    result: dict[str, Any] | None = None
    created: float = dataclasses.field(default_factory=time.time)
    elapsed_ms: float | None = None
    client: str | None = None
    # The result while it is computed: {"masks": [annotation + "id"], "retracted": [id]} per batch, in order.
    # Applied one after the other they leave exactly result["annotations"]; the events stream sends them.
    updates: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_json(self, with_result: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "job_id": self.job_id,
            "image_id": self.image_id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "params": self.params,
        }
        if self.message is not None:
            out["message"] = self.message
        if self.elapsed_ms is not None:
            out["elapsed_ms"] = round(self.elapsed_ms, 1)
        if with_result and self.result is not None:
            out["result"] = self.result
        return out

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class MemoryJobStore:
    """At most ``max_jobs`` jobs (queued + running + finished); to make room the oldest finished go first."""

    def __init__(self, max_jobs: int = 32) -> None:
        self.max_jobs = max(1, int(max_jobs))
        self._jobs: OrderedDict[str, EverythingJob] = OrderedDict()
        self._by_key: dict[tuple, str] = {}
        self._changed = threading.Condition()

    def add(self, job: EverythingJob, key: tuple) -> None:
        with self._changed:
            while len(self._jobs) >= self.max_jobs:
                oldest = next((j for j in self._jobs.values() if j.finished), None)
                if oldest is None:
                    raise TooManyJobs(
                        f"{len(self._jobs)} everything jobs are already queued or running; try again later"
                    )
                del self._jobs[oldest.job_id]
                self._by_key = {k: v for k, v in self._by_key.items() if v != oldest.job_id}
            self._jobs[job.job_id] = job
            self._by_key[key] = job.job_id

    def get(self, job_id: str) -> EverythingJob | None:
        with self._changed:
            return self._jobs.get(job_id)

    def find(self, key: tuple) -> EverythingJob | None:
        with self._changed:
            return self._jobs.get(self._by_key.get(key, ""))

    def update(self, job_id: str, unless: tuple[str, ...] = (), **changes: Any) -> bool:
        with self._changed:
            job = self._jobs.get(job_id)
            if job is None or job.status in unless:
                return False
            for name, value in changes.items():
                setattr(job, name, value)
            self._changed.notify_all()
            return True

    def wait_for_change(self, job_id: str, seen: tuple[str, float], timeout: float) -> None:
        """Blocks until the job's (status, progress) differs from ``seen`` or ``timeout`` seconds pass."""

        def changed() -> bool:
            job = self._jobs.get(job_id)
            return job is None or (job.status, job.progress) != seen

        with self._changed:
            self._changed.wait_for(changed, timeout=timeout)

    def jobs(self) -> list[EverythingJob]:
        with self._changed:
            return list(self._jobs.values())
