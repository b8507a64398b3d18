"""Every exception executioner raises on purpose, rooted at :class:`ExecutionerError`.

Each class also inherits the builtin it specialises, carries the fields a caller
needs (file, job id, key), and is picklable so it can cross submitit.
"""

from __future__ import annotations


class ExecutionerError(Exception):
    """Root of all executioner errors."""


class WorkflowError(ExecutionerError, ValueError):
    """A workflow file is invalid: one problem, named by file, job and key."""

    def __init__(self, message: str, file: str = "", job: str | None = None, key: str | None = None):
        self.message = message
        self.file = file
        self.job = job
        self.key = key
        super().__init__(message, file, job, key)

    def __str__(self) -> str:
        where = [self.file] if self.file else []
        if self.job is not None:
            where.append(f"job {self.job!r}")
        if self.key is not None:
            where.append(f"key {self.key!r}")
        return f"{': '.join(where)}: {self.message}" if where else self.message


class PoolError(ExecutionerError, FileNotFoundError):
    """A pool or run directory is missing or is not what it should be."""

    def __init__(self, message: str, path: str = ""):
        self.message = message
        self.path = path
        super().__init__(message, path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class CorruptFileError(ExecutionerError, ValueError):
    """A file in a run directory cannot be read as what it should be."""

    def __init__(self, message: str, path: str = ""):
        self.message = message
        self.path = path
        super().__init__(message, path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class WorkflowErrors(ExecutionerError, ValueError):
    """Every problem found in one workflow file; each prints as one line."""

    def __init__(self, errors: list[WorkflowError]):
        self.errors = list(errors)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class _RunMessage(ExecutionerError):
    """An error about one run, printed as its message alone."""

    def __init__(self, message: str, run_id: str = ""):
        self.message = message
        self.run_id = run_id
        super().__init__(message, run_id)

    def __str__(self) -> str:
        return self.message


class RunBusy(_RunMessage, BlockingIOError):
    """Someone else is changing this run right now (the coordinator lock is held)."""


class Refused(_RunMessage, RuntimeError):
    """A resume, rollback or from-job failed one of its checks; nothing was written."""


class ChangeIncomplete(_RunMessage, OSError):
    """A change to a run (a resume, or one a crashed coordinator left in ``.coord/``) could
    not be finished or undone (an I/O error); its staging folder stays for the next try."""


class ForeignFile(ExecutionerError, FileNotFoundError):
    """At a path where a process keeps a file of its own (a heartbeat, a clock probe, the
    coordinator lock, a job file it is about to run), something else: a symlink, a file with
    more than one link, not a regular file. Never written through; to its caller it is as if
    its file were gone (it makes its own again, or refuses the job)."""

    def __init__(self, message: str, path: str = ""):
        self.message = message
        self.path = path
        super().__init__(message, path)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class UnknownJob(ExecutionerError, KeyError):
    """``exec-status --why JOB`` (or another view) named a job, task or chunk the run has
    not: the run, the name, and the closest names it has (exit 2)."""

    def __init__(self, run_id: str, job: str, close: list[str] | None = None):
        self.run_id = run_id
        self.job = job
        self.close = list(close or [])
        super().__init__(run_id, job, self.close)

    def __str__(self) -> str:
        hint = f" (closest: {', '.join(self.close)})" if self.close else ""
        return f"run {self.run_id}: no job, task or chunk {self.job!r}{hint}"


class MissingExtra(ExecutionerError, ImportError):
    """An optional extra (``pip install 'executioner[report]'``) is not installed."""

    def __init__(self, message: str, extra: str = ""):
        self.message = message
        self.extra = extra
        super().__init__(message, extra)

    def __str__(self) -> str:
        return self.message
