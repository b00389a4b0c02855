"""A queue of training runs side by side, each `iama train` in its own process, resumable (used by `iama demo`
and `iama sweep`).

On a CPU, torch gains little from a second thread on the matrices of a small model, so runs in parallel on
shares of the cores finish sooner than one after the other; on a GPU the queue trains one at a time. A run
that stops stops the others; each resumes from its last checkpoint next time (iama.trainer).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _steps_done(output_dir) -> tuple[int, str]:
    """The last logged step of a run and its objective estimate, from OUTPUT/metrics.csv (written atomically)."""
    try:
        with open(Path(output_dir) / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step")]
    except FileNotFoundError:
        return 0, ""
    if not rows:
        return 0, ""
    objective = next((r["iama/objective"] for r in reversed(rows) if r.get("iama/objective")), "")
    return int(float(rows[-1]["step"])), objective


def _error_line(log: Path) -> str:
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    errors = [x.removeprefix("iama: error: ") for x in lines if x.startswith("iama: error: ")]
    return (errors or lines or ["no output"])[-1]


def train_side_by_side(jobs: dict, threads: int, progress=True, slots: int | None = None) -> dict[str, Path]:
    """Train each job ({label: (train CLI args, TrainConfig)}) in its own process with `threads` threads, at most
    `slots` at once (default: all), in order; returns {label: OUTPUT/final}. Output goes to OUTPUT.log; one
    progress bar per started run and, for a queue, one for all of it (its time left counts every run's steps)."""
    from tqdm.auto import tqdm

    slots = len(jobs) if slots is None else max(1, slots)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, procs, bars, finished = list(jobs), {}, {}, []
    print(f"== training {', '.join(jobs)} " + ("side by side" if slots >= len(jobs) else f"{slots} at a time")
          + f", {threads} thread(s) each; output in "
          f"{', '.join(str(Path(cfg.output_dir)) + '.log' for _, cfg in jobs.values())} ==", flush=True)
    queue = len(jobs) > slots
    total = tqdm(total=sum(cfg.max_steps for _, cfg in jobs.values()), desc=f"0/{len(jobs)} runs done",
                 initial=sum(_steps_done(cfg.output_dir)[0] for _, cfg in jobs.values()), unit="step", position=0,
                 disable=not (progress and queue), dynamic_ncols=True)

    def start(label):
        args, cfg = jobs[label]
        log = Path(str(cfg.output_dir) + ".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            procs[label] = (subprocess.Popen([sys.executable, "-m", "iama.cli", "train", *args], env=env,
                                             stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log)
        bars[label] = tqdm(total=cfg.max_steps, initial=_steps_done(cfg.output_dir)[0], desc=f"training {label}",
                           unit="step", position=len(bars) + queue, disable=not progress, dynamic_ncols=True)

    try:
        while True:
            while pending and len(procs) - len(finished) < slots:
                start(pending.pop(0))
            codes = {label: p.poll() for label, (p, _) in procs.items()}
            for label, bar in bars.items():
                if label in finished:
                    continue
                step, objective = _steps_done(jobs[label][1].output_dir)
                if objective:
                    bar.set_postfix_str(f"objective {float(objective):.4f}", refresh=False)
                total.update(step - bar.n)
                bar.update(step - bar.n)
                if codes[label] == 0:
                    finished.append(label)
            total.set_description_str(f"{len(finished)}/{len(jobs)} runs done", refresh=False)
            # a run that fails stops the others (they resume from their checkpoints next time)
            if any(code not in (None, 0) for code in codes.values()) or (not pending and len(finished) == len(jobs)):
                break
            time.sleep(0.5)
    finally:
        stopped = [label for label, (p, _) in procs.items() if p.poll() is None]
        for label in stopped:
            procs[label][0].terminate()
            procs[label][0].wait()
        for bar in [*bars.values(), total]:
            bar.close()
    for label, (p, log) in procs.items():
        if p.returncode != 0 and label not in stopped:  # the run that failed, not one stopped because of it
            raise RuntimeError(f"training {label} stopped: {_error_line(log)} (its output: {log})")
    return {label: Path(cfg.output_dir) / "final" for label, (_, cfg) in jobs.items()}
