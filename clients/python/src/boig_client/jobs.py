"""Following a generation job to its end: its states drawn as a progress bar, the wait before
the next poll, and the final state turned into the answer (or the job's typed error)."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from boig_client.contracts import FINAL_STATES, JobState, JobStatus
from boig_client.errors import BoigError, error_from_payload

ProgressOption = bool | Console | None
"""Draw a progress bar: True, False, None (only when standard error is a terminal), or the
rich Console to draw it on."""


def job_error(status: JobStatus) -> BoigError:
    """A failed job's error as the exception its type names (``worker_lost``,
    ``time_limit_exceeded``, ...): job errors travel in the same shape as error answers."""
    error = status.error
    type_, message = (error.type, error.message) if error else ("backend_error", "no error given")
    payload = {"error": {"type": type_, "message": f"job {status.job_id} failed: {message}"}}
    return error_from_payload(payload, status_code=500)


class JobWatcher:
    """One wait for one job: draws each polled state and says when to poll next.

    The bar follows the gateway's own account of the job: its queue position while queued,
    then the worker's stage, denoising step of total and estimated time left.
    """

    def __init__(
        self,
        job_id: str,
        *,
        progress: ProgressOption = None,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
        self.job_id = job_id
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout
        self._state: JobState | None = None
        self._steps: int | None = None  # the job's denoising steps in all, once reported
        console = progress if isinstance(progress, Console) else Console(stderr=True)
        shown = console.is_terminal if progress is None else progress is not False
        self._bar = Progress(
            TextColumn("{task.fields[job]}"),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[steps]}"),
            TextColumn("{task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not shown,
        )
        self._task = self._bar.add_task("waiting", total=None, job=job_id, steps="", eta="")

    def __enter__(self) -> JobWatcher:
        self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._bar.stop()

    def finished(self, status: JobStatus) -> bool:
        """Draw ``status``; True when the job has ended."""
        self._state = status.state
        self._draw(status)
        return status.state in FINAL_STATES

    def next_delay(self) -> float:
        """Seconds until the next poll; TimeoutError once the wait's time is up (the job
        goes on: wait again, or cancel it)."""
        if self._deadline is None:
            return self._poll_interval
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            state = self._state.value if self._state else "unknown"
            raise TimeoutError(
                f"job {self.job_id} is still {state} after {self._timeout:g} s; it goes on: "
                "wait for it again or cancel it"
            )
        return min(self._poll_interval, remaining)

    def outcome(self, status: JobStatus, *, raise_on_failure: bool) -> JobStatus:
        if raise_on_failure and status.state is JobState.FAILED:
            raise job_error(status)
        return status

    def _draw(self, status: JobStatus) -> None:
        task = self._bar.tasks[0]
        if status.state is JobState.QUEUED:
            position = status.queue_position
            description = f"queued, position {position}" if position else "queued"
            self._bar.update(self._task, description=description, total=None, steps="", eta="")
            return
        if status.state is JobState.RUNNING:
            note = " (cancel requested)" if status.cancel_requested else ""
            step = status.progress
            if step is None or step.total == 0:
                stage = step.stage if step else "starting"
                self._bar.update(self._task, description=stage + note, total=None)
                return
            eta = f"~{step.eta_seconds:.0f} s left" if step.eta_seconds is not None else ""
            self._steps = step.total
            self._bar.update(
                self._task,
                description=step.stage + note,
                completed=step.step,
                total=step.total,
                steps=f"{step.step}/{step.total} steps",
                eta=eta,
            )
            return
        # Ended: a finished job fills the bar; a failed or canceled one keeps where it stopped.
        images = f", {len(status.images)} images" if status.images else ""
        if status.state is JobState.SUCCEEDED:
            total = self._steps or 1
            steps = f"{total}/{total} steps" if self._steps else ""
            self._bar.update(
                self._task,
                total=total,
                completed=total,
                steps=steps,
                eta="",
                description=status.state.value + images,
            )
            return
        self._bar.update(
            self._task, total=task.total or 1, eta="", description=status.state.value + images
        )
