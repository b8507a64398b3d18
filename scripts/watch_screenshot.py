#!/usr/bin/env python3
"""Draw the live view of `exec-status --watch` into an SVG (docs/watch.svg), from a real run:
a sweep with a failing task and a few failing jobs, two local workers, the view looked at
while they run. Also prints the screen as text.

    python scripts/watch_screenshot.py [--out docs/watch.svg]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from rich.console import Console

from executioner.protocol.layout import PoolLayout
from executioner.views.live import Rate, screen
from executioner.views.looking import Looker

WORKFLOW = """name: sweep
jobs:
  - {id: prepare, command: "sleep 0.5"}
  - id: sim
    array: 40
    dependencies: [prepare]
    command: "sleep 1.{index}; test {index} != 7 || (echo 'diverged at step 512' >&2; exit 3)"
  - {id: fetch, command: "echo 'curl: (6) Could not resolve host: data.example.org' >&2; exit 6"}
  - {id: report, command: "sleep 20", dependencies: [sim]}
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "watch.svg"))
    a = p.parse_args()
    bin_dir = os.path.dirname(sys.executable)
    with tempfile.TemporaryDirectory(prefix="exec-shot-") as tmp:
        wf = os.path.join(tmp, "sweep.yaml")
        with open(wf, "w") as f:
            f.write(WORKFLOW)
        pool = os.path.join(tmp, "pool")
        subprocess.run([os.path.join(bin_dir, "exec-submit"), wf, "--pool", pool], check=True,
                       stdout=subprocess.DEVNULL)
        workers = [subprocess.Popen([os.path.join(bin_dir, "exec-worker"), "--pool", pool, "-j", "4", "-q",
                                     "--exit-when-idle", "2"]) for _ in range(2)]
        layout = PoolLayout(pool)
        run = layout.run("sweep-0001")
        looker, rate = Looker(layout, run), Rate()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                sample = looker.look()
                rate.add(sample.at, sample.counts["done"] + sample.counts["failed"])
                if sample.counts["done"] >= 20 and sample.failures:
                    break
                time.sleep(0.5)
            console = Console(record=True, width=110, force_terminal=True)
            console.print(screen(run.run_id, sample, rate.per_second(time.monotonic()), sample.at, time.monotonic()))
            console.save_svg(a.out, title="exec-status POOL sweep-0001 --watch")
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait()
    print(f"wrote {os.path.normpath(a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
