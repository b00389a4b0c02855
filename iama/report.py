"""Writing an evaluation report: report.json (schema: docs/formats.md), report.md and PNG plots (matplotlib Agg).

Everything here reads the report dict that `iama.estimate.estimate` returns; nothing is estimated here."""

from __future__ import annotations

import math
from pathlib import Path

from .algorithms import parse_algorithm
from .utils import atomic_write_json, atomic_write_text, save_figure

PLOTS = ("values_vs_n.png", "objective_vs_n.png", "pareto.png", "lengths.png", "win_rates.png")


def write_report(report: dict, out, plots: bool = True) -> dict:
    """OUT/report.json, OUT/report.md and, with plots, OUT/*.png; returns {what: file name}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    if plots:
        files.update(make_plots(report, out))
    report["plots"] = files
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", markdown(report))
    return {"json": "report.json", "markdown": "report.md", **files}


# ---------------------------------------------------------------------------------------------------------------
# formatting helpers


def _depends_on_n(family: str) -> bool:
    return parse_algorithm(family, n=1).increasing is not None


def _fmt(x, digits=4):
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def _with_ci(curve, i, digits=4):
    mean = curve["mean"][i]
    lo, hi = (curve.get("ci_low") or [None] * (i + 1))[i], (curve.get("ci_high") or [None] * (i + 1))[i]
    if lo is None or hi is None:
        return _fmt(mean, digits)
    return f"{_fmt(mean, digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def family_label(family: str, criterion: dict | None = None) -> str:
    """How a family is named in tables and plots: 'maj (maj@N)', and 'bon (pass@N)' for a 0/1 reward with answers
    (best-of-N on a 0/1 reward is pass@N); else the family."""
    criterion = criterion or {}
    if family == "maj":
        return "maj (maj@N)"
    if family == "bon" and criterion.get("binary") and criterion.get("answers"):
        return "bon (pass@N)"
    return family


def _at(curve, n):
    """Index of N = n in a curve, or None."""
    return curve["n"].index(n) if n in curve["n"] else None


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def effective_statements(report: dict) -> list[str]:
    """'iama with N = 4 matches base with N = 11 (objective)' for every model at each configured N."""
    ref = report.get("reference_model", report["reference"])
    configured = sorted({c["n"] for c in report["criteria"] if c["n"]}) or [1]
    lines = []
    crits = {c["name"]: c for c in report["criteria"]}
    for label, entry in report["effective_n"].items():
        parts = [("objective", entry["objective"])]
        parts += [(f"{k} [{family_label(v['family'], crits.get(k))}]", v) for k, v in entry["criteria"].items()]
        # a criterion with answers: also the other of pass@N (bon) and maj@N
        for k, fams in (entry.get("families") or {}).items():
            c = crits.get(k) or {}
            for fam, v in fams.items():
                if c.get("answers") and fam in ("bon", "maj") and fam != c.get("family"):
                    parts.append((f"{k} [{family_label(fam, c)}]", v))
        for what, e in parts:
            if e is None:
                continue
            for n in configured:
                if n not in e["n"]:
                    continue
                i = e["n"].index(n)
                eff = e["effective_n"][i]
                text = eff if isinstance(eff, str) else f"{eff:.3g}"
                ci = ""
                if e.get("ci_low"):
                    lo, hi = e["ci_low"][i], e["ci_high"][i]
                    ci = f" ({report.get('confidence', 0.95):.0%} CI {_fmt(lo, 3)} to {_fmt(hi, 3)})"
                lines.append(f"{label} with N = {n} matches {ref} with N = {text}{ci} ({what})")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# report.md


def primary_contrast(report: dict) -> list[str]:
    """The report's lead: the configured objective minus the reference's, per method of seeds (intervals over
    seeds and prompts) or else per model (the trained weights held fixed)."""
    conf = int(round(100 * report["confidence"]))
    algorithms = ", ".join(f"{c['name']}: {c['algorithm']}" for c in report["criteria"])
    methods = report.get("methods")
    out = ["## Primary contrast", ""]
    if methods:
        ref = methods["reference"]
        out += [f"The objective at the configured algorithms ({algorithms}) of each method, the mean over its "
                f"seeds, minus `{ref}`'s; {conf}% two-stage bootstrap over seeds and prompts. SE within: the "
                "prompts' part (trained models fixed); SE between: the seeds' part.", ""]
        rows = []
        for name, e in methods["methods"].items():
            d = e.get("minus_reference")
            if d is None:
                continue
            rows.append([name, len(e["seeds"]), _with_interval(e["objective_configured"]), _with_interval(d),
                         _fmt(d.get("se_within"), 3), _fmt(d.get("se_between"), 3)])
        out += [_table(["method", "seeds", "objective", f"minus {ref}", "SE within", "SE between"], rows), ""]
        return out
    ref = report.get("reference_model", report["reference"])
    rows = [[k, _with_interval(m["objective_configured"]), _with_interval(m["objective_configured"]["minus_reference"])]
            for k, m in report["models"].items() if m["objective_configured"].get("minus_reference")]
    if not rows:
        return []
    out += [f"The objective at the configured algorithms ({algorithms}) minus `{ref}`'s, paired over the same "
            f"prompts, {conf}%. One training run per model: the intervals hold each trained model fixed, so they "
            "do not include the variation between training seeds (label seeds METHOD@SEED to include it).", "",
            _table(["model", "objective", f"minus {ref}"], rows), ""]
    return out


def markdown(report: dict) -> str:
    labels = list(report["models"])
    ref = report.get("reference_model", report["reference"])
    keys = report["key_n"]
    conf = int(round(100 * report["confidence"]))
    setup = report.get("setup") or {}
    out = ["# Evaluation under inference-time algorithms", ""]
    out.append(f"Models: {', '.join(f'`{k}`' for k in labels)}; reference: `{ref}`. "
               f"{report['num_prompts']} prompts, M = {', '.join(str(report['models'][k]['m']) for k in labels)} "
               "samples per prompt (one pool per model; every N is estimated from it without further sampling).")
    if setup.get("command"):
        machine = setup.get("machine") or {}
        out.append(f"Made by `{setup['command']}`" + (f" on {_machine_line(machine)}" if machine else "") + ".")
    out.append("")
    out.append(f"Objective: `{report['objective']['description']}`. Intervals are {conf}%: "
               + "; ".join(f"{k}: {v}" for k, v in report["ci_method"].items()) + ".")
    gen = setup.get("generation")
    if gen:
        out.append("")
        out.append("Generation: " + ", ".join(f"{k} = {v}" for k, v in gen.items()) + ".")
    out.append("")
    out.append(_table(["criterion", "reward", "algorithm", "weight", "evaluated families"],
                      [[c["name"], f"`{c['reward']}`", c["algorithm"], _fmt(c["weight"]), ", ".join(c["families"])]
                       for c in report["criteria"]]))
    out += [""] + primary_contrast(report)
    if report.get("methods"):
        out += method_tables(report)

    statements = effective_statements(report)
    if statements:
        out += ["", "## Effective N", "",
                f"The budget the reference `{ref}` needs to match a model's value, interpolated linearly in log N "
                "('more than M' where its curve never gets there):", ""]
        out += [f"- {s}" for s in statements]

    out += ["", "## Objective", "", f"g of the criteria's values, each under its own algorithm at N; {conf}% CI."]
    ns = sorted({n for k in labels for n in report["models"][k]["objective"]["n"]})
    rows = []
    for n in ns:
        row = [n]
        for k in labels:
            curve = report["models"][k]["objective"]
            i = _at(curve, n)
            row.append("–" if i is None else _with_ci(curve, i))
        rows.append(row)
    out += ["", _table(["N", *labels], rows)]
    rows = []
    for k in labels:
        e = report["models"][k]["objective_configured"]
        d = e.get("minus_reference")
        rows.append([k, _with_interval(e), "–" if d is None else _with_interval(d),
                     ", ".join(f"{n} = {_fmt(v)}" for n, v in e["values"].items())])
    out += ["", "At the configured algorithms (" + ", ".join(f"{c['name']}: {c['algorithm']}"
                                                           for c in report["criteria"]) + "); the difference to "
            f"`{ref}` has a paired bootstrap interval (same prompts):", "",
            _table(["model", "objective", f"minus {ref}", "values"], rows)]

    out += ["", "## Values", ""]
    for c in report["criteria"]:
        for fam in c["families"]:
            if fam == "sampling" and any(_depends_on_n(f) for f in c["families"]):
                continue  # sampling is N = 1 of those tables
            header = ["model"] + [f"N = {n}" for n in keys]
            rows = []
            for k in labels:
                curve = report["models"][k]["values"][c["name"]][fam]
                row = [k]
                for n in keys:
                    i = _at(curve, n)
                    row.append("–" if i is None else _with_ci(curve, i))
                rows.append(row)
            if all(all(x == "–" for x in r[1:]) for r in rows):
                continue
            out += [f"**{c['name']}** under {family_label(fam, c)}:", "", _table(header, rows), ""]
    if any(c.get("answers") for c in report["criteria"]):
        out += [("maj (maj@N) selects the answer most of N samples give (ties at random; samples without an "
                 "answer do not vote) and scores the reward of that answer; bon on a 0/1 reward is pass@N (some of "
                 "N samples is correct). Both are unbiased per-prompt estimates from the same pool."), ""]

    if report["win_rates"]:
        out += ["## Win rates", "",
                f"P(the model's selected response beats the reference's) + P(tie) / 2, both decoded with the same "
                f"algorithm; against `{ref}`."
                + (" maj only for a 0/1 reward: (1 + maj@N of the model - maj@N of the reference) / 2."
                   if any(c.get("answers") for c in report["criteria"]) else ""), ""]
        header = ["model", "criterion", "algorithm"] + [f"N = {n}" for n in keys]
        rows = []
        for k, per in report["win_rates"].items():
            for name, fams in per.items():
                for fam, curve in fams.items():
                    rows.append([k, name, fam] + ["–" if _at(curve, n) is None else _with_ci(curve, _at(curve, n), 3)
                                                  for n in keys])
        out += [_table(header, rows), ""]

    kl = report.get("kl")
    if kl and (kl["models"] or kl["note"]):
        out += ["## KL to the reference", "",
                f"KL(model || `{kl['reference']}`) in nats per completion, from each model's own pool: the mean of "
                "log p_model(y|x) - log p_ref(y|x) over its samples; " + (kl["note"] or f"{conf}% CI."), ""]
        if kl["models"]:
            out += [_table(["model", "KL", "CI"], [[k, _fmt(v["mean"]), f"{_fmt(v['ci_low'])} to {_fmt(v['ci_high'])}"]
                                                  for k, v in kl["models"].items()]), ""]

    names = [c["name"] for c in report["criteria"]]
    if len(names) > 1:
        configured = sorted({c["n"] for c in report["criteria"] if c["n"]}) or [1]
        n = configured[0]
        out += ["## Cross-effects", "",
                f"Select by one criterion with best-of-N or worst-of-N at N = {n}, measure every criterion "
                "(ties broken uniformly at random)."
                + (" Selection by majority vote (maj) is not among them." if any(
                    c.get("answers") for c in report["criteria"]) else ""), ""]
        header = ["model", "select by", "algorithm"] + names
        rows = []
        for k in labels:
            for a in names:
                for fam in ("bon", "won"):
                    per = report["models"][k]["cross_effects"][a][fam]
                    i = _at(per[names[0]], n)
                    if i is None:
                        continue
                    rows.append([k, a, f"{fam}:{n}"] + [_with_ci(per[b], i) for b in names])
        out += [_table(header, rows), ""]

    out += ["## Pareto fronts", "", "Non-dominated models in criterion space ("
            + ", ".join(f"{c['name']} under {c['family']}" for c in report["criteria"]) + ")."
            " A front of one model means it is at least as good on every criterion.", ""]
    fronts = report["pareto"]["fronts"]
    out += [_table(["N", "front", "all points"],
                   [[n, ", ".join(fronts[str(n)]["front"]),
                     "; ".join(f"{k}: ({', '.join(_fmt(v) for v in pt)})"
                               for k, pt in fronts[str(n)]["points"].items())]
                    for n in keys if str(n) in fronts]), ""]

    lengths = {k: report["models"][k]["lengths"] for k in labels if report["models"][k]["lengths"]}
    if lengths:
        out += ["## Lengths", "", "Completion lengths in tokens (through EOS, as the length reward counts them).", "",
                _table(["model", "mean", "std", "10%", "50%", "90%", "max"],
                       [[k, _fmt(v["mean"]), _fmt(v["std"]), _fmt(v["quantiles"]["0.1"]), _fmt(v["quantiles"]["0.5"]),
                         _fmt(v["quantiles"]["0.9"]), v["max"]] for k, v in lengths.items()]), ""]

    if report.get("plots"):
        out += ["## Plots", ""] + [f"![{name}]({name})" for name in report["plots"].values()] + [""]
    return "\n".join(out).rstrip() + "\n"


def method_tables(report: dict) -> list[str]:
    """Each method's values at the key N, the mean over its seeds, with two-stage intervals."""
    methods = report["methods"]["methods"]
    keys = report["key_n"]
    out = ["## Methods over seeds", "",
           "Each method's value is the mean over its seeds (" + "; ".join(
               f"`{k}`: {', '.join(e['seeds'])}" for k, e in methods.items()) + f"); {round(100 * report['confidence'])}%"
           " two-stage bootstrap over seeds and prompts.", ""]
    for c in report["criteria"]:
        for fam in c["families"]:
            if fam == "sampling" and any(_depends_on_n(f) for f in c["families"]):
                continue
            rows = []
            for k, e in methods.items():
                curve = e["values"][c["name"]][fam]
                rows.append([k] + ["–" if _at(curve, n) is None else _with_ci(curve, _at(curve, n)) for n in keys])
            out += [f"**{c['name']}** under {family_label(fam, c)}:", "",
                    _table(["method"] + [f"N = {n}" for n in keys], rows), ""]
    return out


# ---------------------------------------------------------------------------------------------------------------
# plots


def _band(ax, curve, label, color, linestyle="-"):
    xs = curve["n"]
    ax.plot(xs, curve["mean"], marker="o", markersize=3, label=label, color=color, linestyle=linestyle)
    if curve.get("ci_low") and None not in curve["ci_low"]:
        ax.fill_between(xs, curve["ci_low"], curve["ci_high"], color=color, alpha=0.15, linewidth=0)


def _log2(ax, m):
    ax.set_xscale("log", base=2)
    ticks = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= m] or [1]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel("N")


def make_plots(report: dict, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(report["models"])
    colors = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(labels)}
    m = max(report["models"][k]["m"] for k in labels)
    files = {}
    crits = report["criteria"]
    configured = sorted({c["n"] for c in crits if c["n"]})

    # values vs N: a row per family that depends on N, a column per criterion
    fams = list(dict.fromkeys(f for c in crits for f in c["families"] if _depends_on_n(f)))
    if fams:
        fig, axes = plt.subplots(len(fams), len(crits), figsize=(4.2 * len(crits), 3.2 * len(fams)), squeeze=False)
        for r, fam in enumerate(fams):
            for col, c in enumerate(crits):
                ax = axes[r][col]
                if fam not in c["families"]:  # e.g. maj for a criterion without answers
                    ax.axis("off")
                    continue
                for k in labels:
                    curve = report["models"][k]["values"][c["name"]].get(fam)
                    if curve:
                        _band(ax, curve, k, colors[k])
                for n in configured:
                    ax.axvline(n, color="grey", linewidth=0.8, linestyle=":")
                _log2(ax, m)
                ax.set_title(f"{c['name']} under {family_label(fam, c)}")
                ax.set_ylabel("value")
        shown = [ax for row in axes for ax in row if ax.get_legend_handles_labels()[0]]
        if shown:
            shown[0].legend(fontsize=8)
        fig.tight_layout()
        files["values"] = save_figure(fig, out / "values_vs_n.png").name

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k in labels:
        _band(ax, report["models"][k]["objective"], k, colors[k])
    for n in configured:
        ax.axvline(n, color="grey", linewidth=0.8, linestyle=":")
    _log2(ax, m)
    ax.set_ylabel("objective")
    ax.set_title(report["objective"]["description"], fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    files["objective"] = save_figure(fig, out / "objective_vs_n.png").name

    names = report["pareto"]["criteria"]
    if len(names) >= 2:
        pairs = [(a, b) for i, a in enumerate(names[:4]) for b in names[i + 1:4]]
        fronts = report["pareto"]["fronts"]
        ns = [n for n in report["key_n"] if str(n) in fronts]
        markers = "osD^v<>ph*"
        fig, axes = plt.subplots(1, len(pairs), figsize=(4.6 * len(pairs), 4), squeeze=False)
        for ax, (a, b) in zip(axes[0], pairs):
            ia, ib = names.index(a), names.index(b)
            for k in labels:
                xs = [fronts[str(n)]["points"][k][ia] for n in ns]
                ys = [fronts[str(n)]["points"][k][ib] for n in ns]
                ax.plot(xs, ys, color=colors[k], linewidth=0.8, alpha=0.6)
                for j, n in enumerate(ns):
                    on_front = k in fronts[str(n)]["front"]
                    ax.scatter(xs[j], ys[j], color=colors[k], marker=markers[j % len(markers)], s=36,
                               edgecolors="black" if on_front else "none", linewidths=1.0, zorder=3,
                               label=f"{k}" if j == 0 else None)
            for j, n in enumerate(ns):
                ax.scatter([], [], color="grey", marker=markers[j % len(markers)], label=f"N = {n}")
            ax.set_xlabel(a)
            ax.set_ylabel(b)
            ax.set_title("models across N (black edge: on the front at that N)", fontsize=8)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        files["pareto"] = save_figure(fig, out / "pareto.png").name

    lengths = {k: report["models"][k]["lengths"] for k in labels if report["models"][k]["lengths"]}
    if lengths:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for k, v in lengths.items():
            total = sum(v["histogram"]["counts"]) or 1
            ax.step(v["histogram"]["lengths"], [c / total for c in v["histogram"]["counts"]], where="mid",
                    color=colors[k], label=k)
        ax.set_xlabel("completion length (tokens)")
        ax.set_ylabel("fraction of samples")
        ax.legend(fontsize=8)
        fig.tight_layout()
        files["lengths"] = save_figure(fig, out / "lengths.png").name

    if report["win_rates"]:
        fig, axes = plt.subplots(1, len(crits), figsize=(4.2 * len(crits), 3.2), squeeze=False)
        for ax, c in zip(axes[0], crits):
            for k, per in report["win_rates"].items():
                for fam, style in (("bon", "-"), ("won", "--"), ("maj", ":")):
                    if fam in per[c["name"]]:
                        _band(ax, per[c["name"]][fam], f"{k} {fam}", colors[k], style)
            ax.axhline(0.5, color="grey", linewidth=0.8)
            _log2(ax, m)
            ax.set_ylim(0, 1)
            ax.set_ylabel(f"win rate vs {report['reference']}")
            ax.set_title(c["name"])
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        files["win_rates"] = save_figure(fig, out / "win_rates.png").name
    return files


def _with_interval(e: dict) -> str:
    """'mean [low, high]', or the mean alone when there is no interval."""
    ci = f" [{_fmt(e.get('ci_low'))}, {_fmt(e.get('ci_high'))}]" if e.get("ci_low") is not None else ""
    return _fmt(e["mean"]) + ci


def _machine_line(machine: dict) -> str:
    device = machine.get("gpu") or f"{machine.get('cpu_count', '?')} CPU cores"
    return f"{device}, torch {machine.get('torch', '?')}, Python {machine.get('python', '?')}"
