"""final/report.html: one self-contained page about a finished search (plotly's JavaScript and the
images inlined: it opens with no network). Built from the experiment's stored results
(experiment/), the analyses in insight.py and the final stage's outputs (metrics.json,
misclassified.png); written by the final stage and rebuilt by `launch.py report EXP` (an
experiment in remote storage is read and written through storage.Location)."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from .atomic import write_text
from .errors import UserError
from .experiment import Experiment, FinalState, Trial
from .experiment.completion import write_marker
from .experiment.layout import FINAL_MARKER
from .experiment.records import OUTCOMES
from .insight import IMPORTANCE_SEEDS, category, importance, rung_decisions, searched
from .spec import EARLY_STOPPING, SearchSpec
from .storage import Location, staged

REPORT_FILE = "report.html"
NEEDED = ("metrics.json", "misclassified.png")  # final/ files the page is built from
OUTCOME_COLOURS = {
    "completed": "#2ca02c",
    "asha_stopped": "#ff7f0e",
    "time_budget": "#9467bd",
    "not_started": "#7f7f7f",
    "early_stopped": "#17becf",
    "diverged": "#d62728",
    "oom": "#8c564b",
    "error": "#e377c2",
    "interrupted": "#bcbd22",
    "infeasible": "#b0b0b0",  # broke a constraint (grey, as on the front's plot)
}
DASH = {"completed": "solid", "asha_stopped": "dot", "early_stopped": "dash"}
MISSING_LABEL = "(not sampled)"  # a conditional parameter where its condition did not hold
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f4f4f4}.note{color:#555;font-size:.92em;max-width:70em}
.trust{font-weight:bold}code{background:#f4f4f4;padding:0 .2em}img{max-width:100%}"""


def write_report(exp: Experiment, final: Path) -> Path:
    """The final stage's call: the page from the outputs it just wrote into the local folder `final`."""
    out = final / REPORT_FILE
    write_text(
        out, render(exp, json.loads((final / "metrics.json").read_text()), (final / "misclassified.png").read_bytes())
    )
    return out


def build_report(exp: Experiment) -> Location:
    """`launch.py report`: the page rebuilt from a complete final/ made from the trials as they are
    (its files checked against its marker), written into a staged copy of final/ that is swapped in
    whole, its marker rewritten last."""
    final = exp.final
    missing = [name for name in NEEDED if not (final / name).exists()]
    if missing:
        raise UserError(f"{final}: {', '.join(missing)} missing; run `python launch.py export {exp.location}` first")
    state = exp.final_state()
    state.require("report", exp.location)
    page = render(exp, _metrics(state), state.read("misclassified.png"))
    with staged(final, marker=FINAL_MARKER, start_from_current=True) as out:
        write_text(out / REPORT_FILE, page)
        write_marker(out, exp.trials)
    return final / REPORT_FILE


def _metrics(state: FinalState) -> dict:
    path = state.folder / "metrics.json"
    try:
        metrics = json.loads(state.read("metrics.json"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: damaged ({type(exc).__name__}); rebuild final/ with `launch.py export`") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{path}: damaged (not a JSON object); rebuild final/ with `launch.py export`")
    return metrics


def render(exp: Experiment, metrics: dict, mistakes_png: bytes) -> str:
    """The page: the experiment's trials and the final stage's metrics."""
    spec, trials, table = exp.spec, exp.trials, exp.frame()
    body = [
        f"<h1>raydigits: {_e(spec.name)}</h1><p class=note>{_e(str(exp.location))}</p>",
        _best_section(metrics, spec),
        *([_front_section(exp, metrics)] if spec.multi_objective else []),
        _section(
            "trials",
            "Every trial",
            _parcoords(table, spec),
            f"One line per trial: its searched parameters and its best {spec.metric} over the epochs it ran, "
            "coloured by how it ended. Drag along an axis to filter.",
        ),
        _importance_section(table, spec),
        _asha_section(trials, spec),
        _audit_section(metrics, spec),
        _section(
            "curves",
            "Learning curves",
            _curves(trials, spec, metrics),
            "Click a legend entry to hide a trial, double-click to show it alone.",
        ),
        _section(
            "confusion", f"Confusion matrix ({_e(metrics.get('evaluated_split', 'test'))} split)", _confusion(metrics)
        ),
        _section(
            "mistakes", "Most confident mistakes", f"<img alt='misclassified images' src='{_data_uri(mistakes_png)}'>"
        ),
    ]
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>raydigits report: {_e(spec.name)}</title>"
        f"<style>{CSS}</style><script>{_plotly_js()}</script></head><body>{''.join(body)}</body></html>"
    )


# ------------------------------------------------------------------ pieces
def _e(text) -> str:
    return html.escape(str(text))


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _section(anchor: str, title: str, content: str, note: str = "") -> str:
    note = f"<p class=note>{note}</p>" if note else ""
    return f"<section id={anchor}><h2>{title}</h2>{note}{content}</section>"


def _fig_html(fig, div_id: str) -> str:
    fig.update_layout(margin=dict(l=60, r=30, t=40, b=50), template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot_{div_id}", config={"displaylogo": False})


def _table(rows, header=None) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    return "<table>" + head + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return _e(v)


def _best_section(m: dict, spec: SearchSpec) -> str:
    split = m.get("evaluated_split", "test")
    epoch = f"{m['best_epoch']}: {m['epoch_note']}" if m.get("epoch_note") else m["best_epoch"]
    rows = [
        ("trial", _e(m["best_trial"])),
        ("epoch", _e(epoch)),
        (spec.metric, _fmt(m[f"best_{spec.metric}"])),
        (f"{split} accuracy", _fmt(m[f"{split}_accuracy"])),
        ("trials", _e(f"{m['n_trials']} ({m['n_completed']} completed, {m['n_asha_stopped']} stopped by ASHA)")),
    ]
    if m.get("ties"):
        rows.append(("paired ties (validation)", _e(m["ties"])))
    if m.get("search_wall_time_s"):
        rows.append(("search time", _e(f"{m['search_wall_time_s']:.0f} s")))
    params = _table([(_e(k), _fmt(v)) for k, v in m["best_params"].items()], ["searched parameter", "value"])
    config = _table([(_e(k), _fmt(v)) for k, v in sorted(m["best_config"].items())], ["TrainConfig key", "value"])
    return _section(
        "best",
        "Best trial",
        _table(rows) + params + f"<details><summary>its full training config</summary>{config}</details>",
    )


FRONT_COLOUR, OFF_COLOUR = "crimson", "#b0b0b0"  # the front; dominated and infeasible trials, greyed
OFF_SYMBOL = {"dominated": "circle-open", "infeasible": "x-thin-open"}


def _front_section(exp: Experiment, m: dict) -> str:
    """A multi-objective search's Pareto front on validation: the quality metric against each cost
    objective (hover: the trial's config), and the table of members with their test accuracy."""
    spec, front = exp.spec, exp.front()
    pareto = m.get("pareto") or {}
    quality = spec.metric
    costs = [k for k, _ in spec.objective_list if k != quality]
    figures = "".join(_front_plot(front, spec, quality, cost) for cost in costs)
    split = pareto.get("evaluated_split", m.get("evaluated_split", "test"))
    shown = list(dict.fromkeys([*dict(spec.objective_list), "val_acc"]))  # val_acc once, objective or not
    columns = ["trial", "epoch", *shown, f"{split} accuracy", "model"]
    rows = [
        (
            _e(r["trial_id"]),
            _e(r["epoch"]),
            *(_fmt(r[k]) for k in shown),
            _fmt(r[f"{split}_accuracy"]),
            f"<code>{_e(r['model_pt'])}</code>",
        )
        for r in pareto.get("members", [])
    ]
    off = pareto.get("off_front", {})
    rest = _table([(_e(t), _e(why)) for t, why in sorted(off.items())], ["trial", "why not on the front"])
    objectives = ", ".join(f"{k} ({v})" for k, v in spec.objective_list)
    constraints = ", ".join(b.describe(k) for k, b in spec.constraints.items())
    note = (
        f"The trials no other usable, feasible trial beats in every objective ({_e(objectives)}), on validation, "
        f"each at the epoch the final stage would ship of it (select_epoch: {_e(spec.select_epoch)}); "
        + (f"constraints: {_e(constraints)}; " if constraints else "")
        + f"dominated and infeasible trials greyed. The {_e(split)} accuracy is reported, never used to choose. "
        "Hover a point for its config. <code>python launch.py export EXP --pick 'latency_ms&lt;=2'</code> takes "
        "the most accurate member within a bound."
    )
    body = figures + _table(rows, columns) + f"<details><summary>trials off the front</summary>{rest}</details>"
    return _section("front", "Pareto front", body, note)


def _front_plot(front, spec: SearchSpec, quality: str, cost: str) -> str:
    import plotly.graph_objects as go

    names = searched(spec)
    fig = go.Figure()
    for status in ("infeasible", "dominated", "front"):
        points = [p for p in front.points if p.status == status and p.choice is not None and cost in p.costs]
        if not points:
            continue
        if status == "front":
            points = sorted(points, key=lambda p: p.costs[cost])
        hover = [
            f"{p.trial_id} (epoch {p.epoch}, {status}{': ' + p.why if p.why else ''})<br>"
            + "<br>".join(f"{n}={p.config[n]}" for n in names if p.config.get(n) is not None)
            for p in points
        ]
        fig.add_trace(
            go.Scatter(
                x=[p.costs[cost] for p in points],
                y=[p.choice.value for p in points],  # type: ignore[union-attr]
                mode="lines+markers" if status == "front" else "markers",
                line=dict(shape="hv", color=FRONT_COLOUR) if status == "front" else None,
                marker=dict(
                    size=10 if status == "front" else 8,
                    color=FRONT_COLOUR if status == "front" else OFF_COLOUR,
                    symbol=OFF_SYMBOL.get(status, "circle"),
                ),
                name=status,
                hovertext=hover,
                hoverinfo="text+x+y",
            )
        )
    fig.update_layout(height=460, xaxis_title=cost, yaxis_title=f"{quality} (validation)", hovermode="closest")
    return _fig_html(fig, f"front_{cost}")


def _axis(spec: SearchSpec, name: str, values: list) -> dict:
    """One parallel-coordinates axis: categories (and a conditional's 'not sampled') as numbered
    ticks, log-uniform ranges on a log10 axis with labels in the parameter's own units."""
    p = spec.parameters[name]
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) for v in values]
    if p.values is not None:
        labels = [category(v) for v in p.values] + ([MISSING_LABEL] if any(missing) else [])
        index = {label: i for i, label in enumerate(labels)}
        return dict(
            label=name,
            values=[index[MISSING_LABEL if miss else category(v)] for v, miss in zip(values, missing)],
            tickvals=list(range(len(labels))),
            ticktext=labels,
            range=[-0.3, len(labels) - 0.7],
        )
    log = p.distribution == "log_uniform_values"
    present = [float(v) for v, miss in zip(values, missing) if not miss]
    lo = float(p.min) if p.min is not None else min(present, default=0.0)
    hi = float(p.max) if p.max is not None else max(present, default=1.0)
    f = (lambda x: math.log10(x)) if log else float
    a, b = f(lo), f(hi)
    span = (b - a) or 1.0
    ticks = list(np.linspace(a, b, 5))
    text = [f"{(10**t if log else t):.3g}" for t in ticks]
    below = a - 0.15 * span  # where 'not sampled' sits
    if any(missing):
        ticks, text = [below, *ticks], [MISSING_LABEL, *text]
    return dict(
        label=name + (" (log)" if log else ""),
        tickvals=ticks,
        ticktext=text,
        range=[below if any(missing) else a, b],
        values=[below if miss else f(float(v)) for v, miss in zip(values, missing)],
    )


def _parcoords(trials, spec: SearchSpec) -> str:
    import plotly.graph_objects as go

    score = f"best_{spec.metric}"
    shown = trials[trials[score].apply(lambda v: v is not None and math.isfinite(v))]
    if shown.empty:
        return "<p>No trial reported a score.</p>"
    dims = [_axis(spec, n, shown[f"param.{n}"].tolist()) for n in searched(spec) if f"param.{n}" in shown]
    dims.append(dict(label=score, values=shown[score].tolist()))
    present = [o for o in OUTCOMES if o in set(shown["outcome"])]
    code = {o: i for i, o in enumerate(present)}
    n = len(present)
    scale = []  # a step per outcome
    for i, o in enumerate(present):
        scale += [[i / n, OUTCOME_COLOURS[o]], [(i + 1) / n, OUTCOME_COLOURS[o]]]
    line = dict(
        color=[code[o] for o in shown["outcome"]],
        colorscale=scale,
        cmin=-0.5,
        cmax=n - 0.5,
        showscale=True,
        colorbar=dict(tickvals=list(range(n)), ticktext=present, title="outcome"),
    )
    fig = go.Figure(go.Parcoords(line=line, dimensions=dims))
    fig.update_layout(height=480)
    return _fig_html(fig, "parcoords")


def _importance_section(trials, spec: SearchSpec) -> str:
    imp = importance(trials, spec)
    text = (
        f"<p class=trust>Trust: {_e(imp.trust)}</p><p class=note>{_e(imp.why[:1].upper() + imp.why[1:])}. {_e(imp.note)} "
        f"The spread is the standard deviation over {len(IMPORTANCE_SEEDS)} refits of fANOVA's random forest "
        "with different seeds.</p>"
    )
    if imp.left_out:
        text += (
            f"<p class=note>Left out (sampled only under a <code>when</code> condition, so not every trial has "
            f"them): {_e(', '.join(imp.left_out))}.</p>"
        )
    if not imp.mean:
        return _section("importance", "Parameter importance (fANOVA)", text)
    rows = [(_e(k), f"{v:.3f}", f"± {imp.spread[k]:.3f}") for k, v in imp.mean.items()]
    import plotly.graph_objects as go

    names = list(imp.mean)[::-1]
    fig = go.Figure(
        go.Bar(
            x=[imp.mean[k] for k in names],
            y=names,
            orientation="h",
            error_x=dict(type="data", array=[imp.spread[k] for k in names]),
        )
    )
    fig.update_layout(height=120 + 40 * len(names), xaxis_title=f"share of the variance of best {spec.metric}")
    return _section(
        "importance",
        "Parameter importance (fANOVA)",
        text + _table(rows, ["parameter", "importance", "spread"]) + _fig_html(fig, "importance"),
        f"optuna's FanovaImportanceEvaluator over the {imp.n_trials} scored trials "
        f"(errored, diverged and out-of-memory trials left out).",
    )


def _asha_rule(spec: SearchSpec) -> str:
    """How the search's early stopping decided, in words, for the rung table."""
    s = spec.scheduler
    rule = (
        f"ASHA (grace period {s.grace_period}, reduction factor {s.reduction_factor:g}, max_t {spec.epochs} "
        f"epochs, {s.brackets} bracket{'s' if s.brackets > 1 else ''}) compares a trial when it reports the "
        f"epoch of a rung: it stops it when its {spec.metric} is "
        f"{'below' if spec.mode == 'max' else 'above'} the {100 * (1 - 1 / s.reduction_factor):.0f}th percentile "
        "of the values the trials that reached that rung before it recorded there (the first always goes on). "
        "<b>Stopped here</b>: trials whose outcome, recorded when Tune ended them, is <code>asha_stopped</code> "
        "after that many epochs. <b>Weakest that went on</b>: the weakest value at the rung among trials that "
        "trained past it, what it took to continue as observed. ASHA is asynchronous: a trial that arrived "
        "early met a different cut-off than one that arrived late, so a stopped trial can hold a value above "
        "that bar."
    )
    if s.type == "family_asha":
        from .search.tune_space import family_parameters

        fam = ", ".join(family_parameters(spec)) or "none: every trial is one family"
        rule += (
            f" This search used <b>family_asha</b>: a trial is compared only with the trials of its own family "
            f"(the values of its searched categorical parameters: {_e(fam)}), and the first rung keeps a larger "
            "share than 1/reduction_factor, so that a slow-starting family's best trials are not stopped "
            "because another family starts faster (BENCHMARKS.md). The bar below pools the families."
        )
    if s.brackets > 1:
        rule += (
            f" With {s.brackets} brackets Tune puts each trial in one of them at random; bracket k compares "
            f"its trials only from epoch {s.grace_period} × {s.reduction_factor:g}<sup>k</sup> on, and only "
            "against its own. Tune does not record a trial's bracket, so this table pools them: a trial "
            "that went on past a rung with a weak value there may simply have been in a later bracket."
        )
    return rule


def _asha_section(trials: tuple[Trial, ...], spec: SearchSpec) -> str:
    title = "ASHA, rung by rung"
    if spec.scheduler.type not in EARLY_STOPPING:
        return _section(
            "asha",
            title,
            f"<p>This search used the {_e(spec.scheduler.type)} scheduler: no trial was stopped early.</p>",
        )
    rungs = rung_decisions(trials, spec)
    rule = _asha_rule(spec)
    rows = []
    for r in rungs:
        stopped = ", ".join(f"{_e(t)} ({v:.4f})" for t, v in sorted(r.stopped.items(), key=lambda kv: kv[1])) or "—"
        other = ", ".join(f"{_e(t)} ({_e(o)})" for t, o in sorted(r.ended_otherwise.items())) or "—"
        rows.append(
            (
                f"epoch {r.milestone}",
                str(len(r.reached)),
                str(len(r.continued)),
                "—" if r.bar is None else f"{r.bar:.4f}",
                stopped,
                other,
            )
        )
    table = _table(
        rows,
        [
            "rung",
            "reached",
            "went on",
            f"weakest {spec.metric} that went on",
            f"stopped here ({spec.metric} at the rung)",
            "ended here otherwise",
        ],
    )
    return _section("asha", title, f"<p class=note>{rule}</p>" + table)


def _audit_section(m: dict, spec: SearchSpec) -> str:
    title = "What early stopping cost"
    es = m.get("early_stopping")
    if not es:
        why = (
            "no trial was audited (audit.top_k: 0, `--no-final`, or early stopping stopped none)"
            if spec.scheduler.type in EARLY_STOPPING
            else f"the {_e(spec.scheduler.type)} scheduler stops no trial early"
        )
        return _section("audit", title, f"<p>Not measured: {why}.</p>")
    rows = [
        (
            _e(a["trial_id"]),
            str(a["stopped_epoch"]),
            _fmt(a["at_stop"]),
            _e(a["audit_trial_id"]),
            _fmt(a["at_max_t"]),
            _fmt(a["best"]),
        )
        for a in es["audited"]
    ]
    table = _table(
        rows,
        [
            "stopped trial",
            "stopped after epoch",
            f"{spec.metric} there",
            "continued as",
            f"{spec.metric} at max_t",
            "its best",
        ],
    )
    note = (
        "After the search, the trials early stopping ended with the best value at their last rung were trained "
        "on from their last checkpoint to max_t (an audit run). The cost is how far the best of them ends above "
        "the best trial early stopping kept; within two binomial standard errors of the validation it is not "
        "measurable. An audited trial is an ordinary finished trial: the final stage may choose it."
    )
    return _section("audit", title, f"<p><b>{_e(es['line'])}</b></p>" + table, note)


def _curves(trials: tuple[Trial, ...], spec: SearchSpec, m: dict) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in trials:
        rows = [r for r in t.results if r.get(spec.metric) is not None]
        if not rows:
            continue
        best = t.trial_id == m["best_trial"]
        params = ", ".join(f"{n}={t.config[n]}" for n in searched(spec) if t.config.get(n) is not None)
        fig.add_trace(
            go.Scatter(
                x=[r["epoch"] for r in rows],
                y=[r[spec.metric] for r in rows],
                mode="lines+markers",
                name=f"{t.trial_id} ({t.outcome})" + (" BEST" if best else ""),
                hovertext=params,
                line=dict(
                    width=4 if best else 1.5,
                    dash=DASH.get(t.outcome, "dashdot"),
                    color=OUTCOME_COLOURS.get(t.outcome) if not best else "crimson",
                ),
            )
        )
    fig.update_layout(height=480, xaxis_title="epoch", yaxis_title=spec.metric, hovermode="closest")
    return _fig_html(fig, "curves")


def _confusion(m: dict) -> str:
    import plotly.graph_objects as go

    cm = np.asarray(m["confusion_matrix"])
    names = list(m["per_class"])
    fig = go.Figure(
        go.Heatmap(
            z=np.log1p(cm),
            x=names,
            y=names,
            text=cm,
            texttemplate="%{text}",
            colorscale="Blues",
            showscale=False,
            hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        height=120 + 45 * len(names),
        width=160 + 45 * len(names),
        xaxis=dict(title="predicted", type="category"),
        yaxis=dict(title="true", type="category", autorange="reversed"),
    )
    return _fig_html(fig, "confusion_heatmap")
