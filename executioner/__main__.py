"""``python -m executioner worker|submit|status ARGS``: the three commands without their
console scripts (detached local workers are started this way)."""

from __future__ import annotations

import sys

from .cli import status_main, submit_main, worker_main

COMMANDS = {"worker": worker_main, "submit": submit_main, "status": status_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m executioner {{{'|'.join(COMMANDS)}}} ARGS")
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
