"""How long `iama demo` takes, by stage, and what it shows, for the demo's configs at one or more git revisions.

Each variant is `LABEL=REV`: configs/length.yaml and configs/length-baseline.yaml as they were at REV (a commit,
tag or branch; the code is always this checkout's), run with `iama demo --configs` into a fresh folder, one
variant after the other on the same machine. The times come from the demo's own OUT/timing.json (training the
two runs side by side, then sampling and scoring the three pools); the effect from its report.json. Each
variant is saved when it ends, and one already in --out from the same command and commit is not rerun.

    python benchmarks/demo_time.py --variant before=f3d2d6c --variant after=HEAD \\
        --out benchmarks/results/demo_time-smollm2-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iama.utils import atomic_write_json, machine_info  # noqa: E402

CONFIGS = ["length.yaml", "length-baseline.yaml"]


def commit_of(rev: str) -> str:
    done = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"demo_time: {rev!r} is not a commit of this repository")
    return done.stdout.strip()


def configs_at(commit: str, folder: Path) -> None:
    """Write the demo's two configs as they were at `commit` into `folder` (in iama/configs/, or in configs/ before
    they moved into the package)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in CONFIGS:
        for where in ("iama/configs", "configs"):
            shown = subprocess.run(["git", "show", f"{commit}:{where}/{name}"], cwd=ROOT, capture_output=True, text=True)
            if shown.returncode == 0:
                break
        else:
            raise SystemExit(f"{name} is in neither iama/configs/ nor configs/ at {commit}")
        (folder / name).write_text(shown.stdout)


def effect(report: dict) -> dict:
    """The demo's headline: each model's objective at the configured N, IAMA - GRPO, IAMA's effective N there."""
    n = sorted({c["n"] for c in report["criteria"] if c["n"]})[0]
    conf = {m: e["objective_configured"] for m, e in report["models"].items()}
    diff = conf["iama"]["minus_reference"]
    eff = report["effective_n"]["iama"]["objective"]
    i = eff["n"].index(n)
    return {"n": n, "objective": {m: [c["mean"], c["ci_low"], c["ci_high"]] for m, c in conf.items()},
            "iama_minus_grpo": [diff["mean"], diff["ci_low"], diff["ci_high"]],
            "iama_effective_n": [eff["effective_n"][i], eff["ci_low"][i], eff["ci_high"][i]]}


def run(label: str, rev: str, commit: str, work: Path, extra: list[str]) -> dict:
    configs, out = work / label / "configs", work / label / "out"
    configs_at(commit, configs)
    cmd = [sys.executable, "-m", "iama.cli", "demo", "--configs", str(configs), "--out", str(out), *extra]
    print(f"== {label}: configs at {rev} ({commit[:12]}) ==", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    timing = json.loads((out / "timing.json").read_text())
    return {"rev": rev, "commit": commit, "timing_s": {k: timing[k] for k in ("total_s", "training_s", "evaluating_s")},
            "effect": effect(json.loads((out / "report.json").read_text())), "machine": timing["machine"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", required=True, help="LABEL=REV; repeat to compare")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo_time.json"))
    ap.add_argument("--work", default=None, help="where the runs go (default: a temporary folder)")
    ap.add_argument("extra", nargs="*", help="more `iama demo` options, after --")
    args = ap.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant)
    commits = {label: commit_of(rev) for label, rev in variants.items()}
    command = " ".join(["python", *(a.replace(f"{ROOT}/", "") for a in sys.argv)])  # no path of this machine
    # resumable: a variant already measured by this command (same revision) is kept, each one saved when done
    done = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    results = {k: v for k, v in done.get("variants", {}).items()
               if done.get("command") == command and v["commit"] == commits.get(k)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for label, rev in variants.items():
            if label not in results:
                results[label] = run(label, rev, commits[label], work, args.extra)
                atomic_write_json(args.out, {"command": command, "machine": machine_info(), "variants": results})
        results = {label: results[label] for label in variants}

    first = next(iter(results.values()))["timing_s"]["total_s"]
    print(f"{'variant':<10}{'minutes':>9}{'training':>10}{'evaluating':>12}{'/ first':>9}   IAMA - GRPO (objective)"
          "   IAMA's effective N")
    for label, r in results.items():
        t, e = r["timing_s"], r["effect"]
        d, eff = e["iama_minus_grpo"], [x if isinstance(x, str) else f"{x:.2f}" for x in e["iama_effective_n"]]
        print(f"{label:<10}{t['total_s'] / 60:>9.1f}{t['training_s'] / 60:>10.1f}{t['evaluating_s'] / 60:>12.1f}"
              f"{t['total_s'] / first:>9.2f}   {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]   {eff[0]} [{eff[1]}, {eff[2]}]")


if __name__ == "__main__":
    main()
