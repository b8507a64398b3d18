"""executioner: workflows of shell jobs on HPC clusters, coordinated through a shared filesystem."""

from .errors import CorruptFileError, ExecutionerError, PoolError, WorkflowError, WorkflowErrors
from .protocol.layout import FORMAT_VERSION, PoolLayout, RunLayout
from .views.status import pool_status, run_status
from .coordinator.submit import create_run
from .execution.worker import Worker
from .workflow import JobSpec, Workflow, load_workflow

__all__ = ["CorruptFileError", "ExecutionerError", "FORMAT_VERSION", "JobSpec", "PoolError",
           "PoolLayout", "RunLayout", "Worker", "Workflow", "WorkflowError", "WorkflowErrors",
           "create_run", "load_workflow", "pool_status", "run_status"]
__version__ = "0.1.0"
