"""Reading and validating a workflow file: parse (YAML/JSON, bounded), values (every key's
kind and bounds), env (written order, bounded expansion), validate (the whole file, every
problem at once). Nothing here writes anything."""

from .validate import JOB_ID_RE, JobSpec, Workflow, load_workflow

__all__ = ["JOB_ID_RE", "JobSpec", "Workflow", "load_workflow"]
