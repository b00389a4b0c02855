"""The report of `iama sweep`: DIR/report.md and DIR/fronts.png from the report dict that iama.sweep.analyse
makes (written beside it as DIR/report.json); nothing is estimated here."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _seed_parts(e) -> str:
    if e.get("se_between") is None:
        return ""
    return f" (SE within seeds {e['se_within']:.3g}, between seeds {e['se_between']:.3g})"


def _ci(e, digits=4) -> str:
    if e is None or e.get("mean") is None:
        return "–"
    if e.get("ci_low") is None:
        return f"{e['mean']:.{digits}g}"
    return f"{e['mean']:.{digits}g} [{e['ci_low']:.{digits}g}, {e['ci_high']:.{digits}g}]"


def _markdown(r: dict) -> str:
    from .report import _machine_line, _table

    names = [c["name"] for c in r["criteria"]]
    conf = round(100 * r["confidence"])
    methods = list(dict.fromkeys(p["method"] for p in r["points"].values()))
    ref, ev = r["reference_point"], r["evaluation"]
    steps = ", ".join(map(str, sorted({p["max_steps"] for p in r["points"].values()})))
    held_out = (f"held out (from prompt {ev['offset']} on; the runs trained on the first "
                f"{ev.get('trained_on', ev['offset'])})" if ev["offset"]
                else "(not held out: the config trains on all prompts)")
    families = ", ".join(f"{c['name']}: {c['family']}" for c in r["criteria"])
    reference = ", ".join(f"{v:.4g}" for v in ref["values"])
    algorithms = ", ".join(f"{k}: {v}" for k, v in r["objective"]["algorithms"].items())
    out = ["# Weight sweep: IAMA against GRPO", ""]
    if r.get("command"):
        out.append(f"Made by `{r['command']}` on {_machine_line(r['machine'])}.")
    out += ["Config `{}`; {}. {} points, {} steps each (runs in `runs/`). Evaluated on {} prompts {}, M = {} samples "
            "each; the full evaluation is in [eval/report.md](eval/report.md).".format(
                r["config"], "; ".join(f"`{k}`: {v}" for k, v in r["methods"].items() if k in methods),
                len(r["points"]), steps, ev["num_prompts"], held_out, ev["m"]), "",
            _table(["criterion", "reward", "algorithm"],
                   [[c["name"], f"`{c['reward']}`", c["algorithm"]] for c in r["criteria"]]), ""]

    p = r.get("primary")
    if p:
        seeds = r.get("seeds")
        over = (f"over {len(seeds)} seeds ({', '.join(map(str, seeds))}) and prompts" if seeds else
                "over prompts; one training run per point, so the intervals hold the trained models fixed")
        out += ["## Primary contrast", "",
                f"Declared before the run: the hypervolume difference IAMA − GRPO at N = {p['n']}, {conf}% "
                f"interval {over}.", "",
                f"- **N = {p['n']}: {_ci(p)}**" + _seed_parts(p)]
        t = p.get("turning")
        if t:
            out.append(f"- The turning contrast, diff(N = {t['n_high']}) − diff(N = {t['n_low']}) (do the fronts "
                       f"change order with the budget?): {_ci(t)}, paired in prompts" + (" and seeds" if seeds else ""))
        sec = p["secondary"]
        if sec["n"]:
            out.append(f"- Secondary budgets (N = {', '.join(map(str, sec['n']))}): {sec['adjustment']}-adjusted "
                       f"{100 * sec['confidence']:.4g}% intervals in the hypervolume table below.")
        out.append("")

    out += ["## How much the criteria conflict", "",
            f"Pearson correlation of the rewards over the untrained model's samples, {conf}% bootstrap interval "
            "over prompts (negative: the criteria conflict):", ""]
    out += [f"- {a} and {b}: {_ci(c, 3)}" for c in r["correlation"] for a, b in [c["criteria"]]]

    out += ["", "## Hypervolume", "",
            f"Each criterion under its configured family at N ({families}); the hypervolume of each method's points "
            f"above the reference point ({reference}, {ref['from']}). {conf}% percentile bootstrap over prompts, the "
            "same resamples for every model (the difference is paired)"
            + ("; with seeds, a method's hypervolume is the mean of its seeds' fronts'." if r.get("seeds") else ".")
            + " The adjusted column widens the secondary budgets' intervals for multiplicity.", ""]
    rows = []
    for n, e in r["fronts"].items():
        adj = (e["difference"] or {}).get("adjusted")
        rows.append([n + (" (primary)" if p and n == str(p["n"]) else ""),
                     *[_ci(e["methods"][k]["hypervolume"]) for k in methods], _ci(e["difference"]),
                     f"[{adj['ci_low']:.4g}, {adj['ci_high']:.4g}]" if adj else "–",
                     "; ".join(f"{k}: {', '.join(e['methods'][k]['front'])}" for k in methods)])
    out += [_table(["N", *methods, "iama − grpo", "adjusted", "fronts"], rows), ""]
    others = sorted({name for e in r["fronts"].values() for name in e.get("by_reference") or {}})
    if others:
        described = {"nadir": "the trained points' nadir at that N (the worst value of each criterion over all "
                              "trained points)", "floor": "the criteria's floors (their rewards' lowest values)"}
        out += ["Does the sign depend on the reference point? IAMA − GRPO above other references, "
                f"{conf}% intervals: " + "; ".join(f"{k}: {described.get(k, k)}" for k in others) + ".", ""]
        out += [_table(["N", f"untrained N = 1 (default)", *others],
                       [[n, _ci(e["difference"]), *[_ci(e["by_reference"].get(k)) for k in others]]
                        for n, e in r["fronts"].items()]), ""]

    out += ["## Objective per weight", "",
            f"The weighted objective at the configured algorithms ({algorithms}, aggregator {r['aggregator']}), "
            f"each weight's own; {conf}% bootstrap, the difference paired.", ""]
    cols = ["untrained", *methods]
    out += [_table(["weights", *cols, "iama − grpo"],
                   [[":".join(f"{v:g}" for v in e["weights"]), *[_ci(e["values"].get(k)) for k in cols],
                     _ci(e["difference"])] for e in r["objective"]["per_weight"]]), ""]

    kl = r.get("kl") or {}
    note = f" ({kl['note']})" if kl.get("note") else ""
    targets = {e.get("target_kl") for e in (kl.get("models") or {}).values()} - {None}
    if targets:
        off = [k for k, e in kl["models"].items() if e.get("off_target")]
        note += (f"; per token against target_kl {', '.join(map(str, sorted(targets)))}: "
                 + (f"**off target by more than 25%: {', '.join(off)}**" if off else "every point within 25%"))
    out += ["## Points", "",
            f"Mean values ({', '.join(names)}) at each N, * on its method's front; KL(point || untrained) in nats "
            f"per completion from the point's own pool{note}; intervals {conf}% (those of the values in "
            "report.json).", ""]
    ns = list(r["fronts"])
    rows = []
    for label in ["untrained", *r["points"]]:
        cells = []
        for n in ns:
            e = r["fronts"][n]
            front = any(label in v["front"] for v in e["methods"].values())
            cells.append("(" + ", ".join(f"{v:.3g}" for v in e["points"][label]["mean"]) + ")" + "*" * front)
        e = (kl.get("models") or {}).get(label) or {}
        per_token = "–" if e.get("per_token") is None else f"{e['per_token']:.3g}" + " (off)" * bool(e.get("off_target"))
        rows.append([label, *cells, _ci(e or None, 3), per_token])
    out += [_table(["point", *[f"N = {n}" for n in ns], "KL", "per token"], rows), ""]
    out += ["## Fronts", "", f"![fronts]({r['plots']['fronts']})", ""] if r.get("plots") else []
    return "\n".join(out).rstrip() + "\n"


def plot_fronts(r: dict, path: Path) -> Path:
    """A panel per N: each point with its per-coordinate interval, each method's front as a staircase, the
    reference point. With three or more criteria, the first two (the staircases are then not drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fronts import front_line
    from .utils import save_figure

    names = [c["name"] for c in r["criteria"]]
    two = len(names) == 2
    ref = r["reference_point"]["values"][:2]
    ns = list(r["fronts"])
    colors = {"iama": "tab:red", "grpo": "tab:blue", "untrained": "grey"}
    fig, axes = plt.subplots(1, len(ns), figsize=(4.4 * len(ns), 4.2), squeeze=False)
    for ax, n in zip(axes[0], ns):
        e = r["fronts"][n]
        for label, pt in e["points"].items():
            method = r["points"][label]["method"] if label in r["points"] else "untrained"
            mean, lo, hi = (np.array(pt[k][:2], dtype=float) for k in ("mean", "ci_low", "ci_high"))
            ax.errorbar(mean[0], mean[1], xerr=[[mean[0] - lo[0]], [hi[0] - mean[0]]],
                        yerr=[[mean[1] - lo[1]], [hi[1] - mean[1]]], fmt="o", ms=4, color=colors[method],
                        elinewidth=0.6, capsize=2, alpha=0.8, label="untrained" if method == "untrained" else None)
            if label in r["points"]:
                ax.annotate(":".join(f"{v:g}" for v in r["points"][label]["weights"][:1 if two else None]),
                            mean, fontsize=6, xytext=(3, 3), textcoords="offset points", color=colors[method])
        for method, entry in e["methods"].items():
            pts = [e["points"][k]["mean"][:2] for k in entry["front"]]
            if two and pts:
                line = front_line(pts, ref)
                ax.plot(line[:, 0], line[:, 1], color=colors[method], linewidth=1.2, label=method)
            else:
                ax.plot([], [], color=colors[method], marker="o", linestyle="none", label=method)
        ax.plot(*ref, marker="x", color="black", linestyle="none", markersize=7, label="reference")
        ax.set_xlabel(f"{names[0]} ({r['criteria'][0]['family']})")
        ax.set_ylabel(f"{names[1]} ({r['criteria'][1]['family']})")
        ax.set_title(f"N = {n}" + ("" if two else f" (first two of {len(names)} criteria)"), fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"each point labelled by its weight{'' if two else 's'}" + (f" of {names[0]}" if two else "")
                 + f"; bars: {round(100 * r['confidence'])}% intervals per criterion", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def write_sweep_report(report: dict, out: Path) -> None:
    from .utils import atomic_write_json, atomic_write_text

    report["plots"] = {"fronts": plot_fronts(report, out / "fronts.png").name}
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report))
