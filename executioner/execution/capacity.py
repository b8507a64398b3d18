"""What a worker has (CPUs, GPUs, memory, custom resources, tags), what is free of it, and
what each running job or task was given.

A worker declares its capacity with ``exec-worker --cpus --gpus --mem-gb --resource --tags``;
what it does not declare comes from where it runs (:func:`detect`): in a Slurm allocation,
the CPUs, GPUs and memory Slurm gave this node; elsewhere the CPUs of its affinity mask, the
GPUs ``CUDA_VISIBLE_DEVICES`` (or ``nvidia-smi -L``) names, and the machine's memory.

:class:`Ledger` is the worker's one account of what is in use. A claim takes what its job
needs before the claim's rename (so two slots never both count the same free CPU) and gives
it back when the try ends; each task of a chunk takes the chunk's per-task needs. GPUs are
handed out by id and cores (with ``--bind``) by number, so no two running jobs ever hold
the same one. Everything here is in-process state under one lock: nothing is shared between
workers (each worker is alone on its capacity).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any, Final, Mapping

import psutil

from ..workflow.values import RESOURCE_NAME, TAG_NAME

GIB: Final = 1024 ** 3
GPU_VARS: Final = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
THREAD_VARS: Final = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Capacity:
    """What one worker declares it has (see the module docstring)."""

    cpus: int
    gpus: tuple[str, ...] = ()  # ids, as CUDA_VISIBLE_DEVICES names them
    mem_gb: float = 0.0
    custom: Mapping[str, float] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()
    cores: tuple[int, ...] = ()  # the CPU numbers --bind hands out (our affinity mask)

    def total(self) -> dict[str, float]:
        return {"cpus": self.cpus, "gpus": len(self.gpus), "mem_gb": self.mem_gb, **self.custom}

    def describe(self) -> dict[str, Any]:
        """As the worker's heartbeat file records it (read by ``exec-status --why``)."""
        return {"cpus": self.cpus, "gpus": list(self.gpus), "mem_gb": round(self.mem_gb, 3),
                "resources": dict(self.custom), "tags": sorted(self.tags)}


def detect(env: Mapping[str, str] | None = None) -> Capacity:
    """The capacity of where we run, with nothing declared."""
    env = os.environ if env is None else env
    cores = _affinity()
    cpus = slurm_cpus(env) or len(cores) or (os.cpu_count() or 1)
    if cores and len(cores) < (os.cpu_count() or 0):  # a mask narrower than the machine (an srun
        cpus = min(cpus, len(cores))                   # task of several on a node) is ours alone
    return Capacity(cpus=cpus, gpus=detect_gpus(env),
                    mem_gb=slurm_mem_gb(env) or psutil.virtual_memory().total / GIB, cores=cores)


def _affinity() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return ()


def slurm_cpus(env: Mapping[str, str]) -> int | None:
    """Our CPUs on this node in a Slurm allocation: SLURM_CPUS_ON_NODE, else the first of
    SLURM_JOB_CPUS_PER_NODE (``"8(x2),4"``)."""
    for name in ("SLURM_CPUS_ON_NODE", "SLURM_JOB_CPUS_PER_NODE"):
        text = env.get(name, "").split(",")[0].split("(")[0]
        if text.isdigit() and int(text) > 0:
            return int(text)
    return None


def slurm_mem_gb(env: Mapping[str, str]) -> float | None:
    """SLURM_MEM_PER_NODE (MB), else SLURM_MEM_PER_CPU x our CPUs, in GB."""
    per_node = env.get("SLURM_MEM_PER_NODE", "")
    if per_node.isdigit() and int(per_node) > 0:
        return int(per_node) / 1024
    per_cpu, cpus = env.get("SLURM_MEM_PER_CPU", ""), slurm_cpus(env)
    if per_cpu.isdigit() and cpus:
        return int(per_cpu) * cpus / 1024
    return None


def detect_gpus(env: Mapping[str, str]) -> tuple[str, ...]:
    """The GPU ids we may use: those CUDA_VISIBLE_DEVICES names (in a Slurm allocation that
    confines devices, Slurm sets it to the ids as this process sees them, which
    SLURM_JOB_GPUS, the node's numbering, may not be), else Slurm's (SLURM_JOB_GPUS,
    SLURM_STEP_GPUS), else those ``nvidia-smi -L`` lists; none without any."""
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        if name in env:
            return parse_gpus(env[name])
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ()
        if out.returncode == 0:
            return tuple(str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU "))
    return ()


def parse_gpus(text: str) -> tuple[str, ...]:
    """``"0,1,3"`` -> its ids; ``"4"`` alone is a list of one id (``--gpus`` says how many).
    As CUDA reads CUDA_VISIBLE_DEVICES, a negative id ends the list: ``"-1"``, the common
    way to hide every GPU, names none (not a GPU called "-1")."""
    ids = [g.strip() for g in text.split(",") if g.strip() and g.strip() != "NoDevFiles"]
    end = next((i for i, g in enumerate(ids) if g.startswith("-") and g[1:].isdigit()), len(ids))
    return tuple(dict.fromkeys(ids[:end]))


@dataclass(frozen=True)
class Assignment:
    """What one running job (or task) holds: its needs, and which GPUs and cores."""

    needs: Mapping[str, float]
    gpus: tuple[str, ...] = ()
    cores: tuple[int, ...] = ()

    def env(self, has_gpus: bool) -> dict[str, str]:
        """Variables for the command: its GPUs (empty for none, when the worker has some:
        a job asking none must not use another job's), its CPUs as thread counts, and all
        of it as EXEC_RESOURCES."""
        out = {"EXEC_RESOURCES": json.dumps(self.record(), separators=(",", ":"))}
        if has_gpus:
            ids = ",".join(self.gpus)
            out.update({name: ids for name in GPU_VARS})
        cpus = int(self.needs.get("cpus", 0))
        if cpus:
            out.update({name: str(cpus) for name in THREAD_VARS})
        return out

    def record(self) -> dict[str, Any]:
        """As the try entry records it."""
        out: dict[str, Any] = {k: v for k, v in self.needs.items() if k != "gpus"}
        if self.gpus:
            out["gpus"] = list(self.gpus)
        if self.cores:
            out["cores"] = list(self.cores)
        return out


class Ledger:
    """What is free of a worker's capacity; thread-safe."""

    def __init__(self, capacity: Capacity, bind: bool = False):
        self.capacity = capacity
        self.bind = bind and bool(capacity.cores)
        self._lock = threading.Lock()
        self._free = capacity.total()
        self._gpus = list(capacity.gpus)
        self._cores = list(capacity.cores)
        self._out: dict[int, Assignment] = {}  # what is held now, by identity: a second give is a no-op

    def missing(self, needs: Mapping[str, float]) -> str | None:
        """What of ``needs`` this worker could never give, even idle ("2 gpus; it has 1"), or None."""
        total = self.capacity.total()
        for k, v in needs.items():
            if v > total.get(k, 0):
                return f"{v:g} {k}; this worker has {total.get(k, 0):g}"
        return None

    def fits(self, needs: Mapping[str, float]) -> bool:
        with self._lock:
            return all(v <= self._free.get(k, 0) + 1e-9 for k, v in needs.items())

    def take(self, needs: Mapping[str, float]) -> Assignment | None:
        """Take ``needs`` if free now (GPU ids and, with bind, cores chosen), else None."""
        with self._lock:
            if not all(v <= self._free.get(k, 0) + 1e-9 for k, v in needs.items()):
                return None
            for k, v in needs.items():
                self._free[k] -= v
            n_gpus, n_cores = int(needs.get("gpus", 0)), int(needs.get("cpus", 0)) if self.bind else 0
            gpus, self._gpus = tuple(self._gpus[:n_gpus]), self._gpus[n_gpus:]
            cores = tuple(self._cores[:min(n_cores, len(self._cores))])
            self._cores = self._cores[len(cores):]
            held = Assignment(dict(needs), gpus, cores)
            self._out[id(held)] = held
            return held

    def give(self, held: Assignment) -> None:
        """Return what ``held`` took; once only (an error path that gives back what was
        already given back must not make room the worker has not)."""
        with self._lock:
            if self._out.pop(id(held), None) is None:
                return
            for k, v in held.needs.items():
                self._free[k] += v
            self._gpus = [g for g in self.capacity.gpus if g in set(self._gpus) | set(held.gpus)]
            self._cores = sorted(set(self._cores) | set(held.cores))

    def free(self) -> dict[str, float]:
        with self._lock:
            return dict(self._free)


def declare(cpus: int | None = None, gpus: str | None = None, mem_gb: float | None = None,
            resources: list[str] | None = None, tags: str | None = None, slots: int | None = None,
            env: Mapping[str, str] | None = None) -> Capacity:
    """The capacity ``exec-worker`` flags declare, the rest from where we run (:func:`detect`).
    ``--gpus 0,2`` names ids; a lone number ``--gpus 2`` is a count (the first two found, or
    ids 0 and 1). Without ``--cpus``, ``-j K`` alone still runs K plain jobs at once (the
    CPUs counted are at least K). ValueError, with the flag named, for anything unusable."""
    found = detect(env)
    if cpus is not None and cpus < 1:
        raise ValueError(f"--cpus must be >= 1, not {cpus}")
    if mem_gb is not None and not 0 <= mem_gb < float("inf"):
        raise ValueError(f"--mem-gb must be a number >= 0, not {mem_gb}")
    ids = found.gpus
    if gpus is not None:
        text = gpus.strip()
        if text.isdigit() and "," not in text:
            n = int(text)
            ids = found.gpus[:n] if len(found.gpus) >= n else tuple(str(i) for i in range(n))
        else:
            ids = parse_gpus(text)
            bad = next((g for g in ids if not g.replace("-", "").replace(":", "").isalnum()), None)
            if bad is not None:
                raise ValueError(f"--gpus: {bad!r} is not a GPU id (give ids as 0,1,3 or a count)")
    custom: dict[str, float] = {}
    for item in resources or []:
        name, eq, value = item.partition("=")
        if not eq or not RESOURCE_NAME.fullmatch(name) or name in ("cpus", "gpus", "mem_gb"):
            raise ValueError(f"--resource {item!r}: give NAME=N for a custom resource "
                             "(cpus, gpus and mem_gb have flags of their own)")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not 0 <= amount < float("inf"):
            raise ValueError(f"--resource {item!r}: N must be a number >= 0")
        custom[name] = amount
    names = tuple(t.strip() for t in (tags or "").split(",") if t.strip())
    bad_tag = next((t for t in names if not TAG_NAME.fullmatch(t)), None)
    if bad_tag is not None:
        raise ValueError(f"--tags: {bad_tag!r} is not a tag name ({TAG_NAME.pattern})")
    count = cpus if cpus is not None else max(found.cpus, slots or 1)
    return Capacity(cpus=count, gpus=ids, mem_gb=found.mem_gb if mem_gb is None else mem_gb, custom=custom,
                    tags=frozenset(names), cores=found.cores)
