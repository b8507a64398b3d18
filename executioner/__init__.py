"""executioner: workflows of shell jobs on HPC clusters, coordinated through a shared filesystem.

The library's names are imported when first used, so that ``exec-status`` does not pay for
loading the worker and the submitter (a tenth of a second of every call)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import CorruptFileError, ExecutionerError, PoolError, WorkflowError, WorkflowErrors
from .protocol.layout import FORMAT_VERSION, PoolLayout, RunLayout

if TYPE_CHECKING:
    from .coordinator.submit import create_run
    from .execution.worker import Worker
    from .views.status import pool_status, run_status
    from .workflow import JobSpec, Workflow, load_workflow

_LAZY = {"pool_status": ".views.status", "run_status": ".views.status", "create_run": ".coordinator.submit",
         "Worker": ".execution.worker", "JobSpec": ".workflow", "Workflow": ".workflow",
         "load_workflow": ".workflow"}

__all__ = ["CorruptFileError", "ExecutionerError", "FORMAT_VERSION", "JobSpec", "PoolError",
           "PoolLayout", "RunLayout", "Worker", "Workflow", "WorkflowError", "WorkflowErrors",
           "create_run", "load_workflow", "pool_status", "run_status"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
