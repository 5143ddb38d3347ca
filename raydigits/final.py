"""The final stage, conducted: read the experiment (experiment/: trials, outcomes, the best
(trial, epoch) on validation), evaluate that checkpoint on the test split as a Ray task
(inference.py), and write final/: pre.csv, metrics.json, trials.csv (evaluation.py), plots
(report.py), report.html (report_html.py), best_model.pt and the `torch.export` program
best_model.pt2; for a multi-objective search also the Pareto front on validation: pareto.csv and
each member's models under pareto/<trial id>/, its test accuracy reported (never used to choose).
Also `export --images`: predict a folder of images with best_model.pt, or with a front member's
(`--pick BOUNDS`, `--trial ID`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from .atomic import write_text
from .data import load_dataset
from .data.store import read_manifest
from .errors import UserError
from .evaluation import predictions_frame, split_metrics, write_csv
from .experiment import Experiment, Front, ties_line
from .experiment.audit import early_stopping_cost
from .experiment.completion import write_marker
from .experiment.layout import FINAL_MARKER
from .inference import predict_state, save_models
from .search import eta
from .spec import SearchSpec, trial_values
from .spec.model import COST_METRICS
from .storage import Location, staged
from .ties import evaluate_ties

TASK_CPUS = 1  # the evaluation task's CPUs (and one GPU when the cluster has one)
PARETO_DIR = "pareto"  # final/pareto/<trial id>/: each front member's best_model.pt, .pt2, classes.json
PARETO_FILE = "pareto.csv"


def predict_on_cluster(state: dict, images: np.ndarray) -> np.ndarray:
    """`inference.predict_state` as a Ray task: on a GPU when the cluster has one."""
    import ray

    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    task = ray.remote(num_cpus=TASK_CPUS, num_gpus=gpus)(predict_state)
    return ray.get(task.remote(state, images, "cuda" if gpus else "cpu"))


def run_final(exp: Experiment) -> dict:
    """Everything in <experiment>/final/, staged and then swapped in whole (storage.staged), with
    its completion marker written last. Returns metrics.json's content."""
    before = exp.final_state()
    if before.problem in ("incomplete", "stale"):
        print(f"{before.line}: rebuilding it over all {len(exp.trials)} trials", flush=True)
    with staged(exp.final, marker=FINAL_MARKER) as out:
        metrics = _final(exp, out)
        write_marker(out, exp.trials)
    print_summary(exp.final, metrics, exp.spec)
    return metrics


def _final(exp: Experiment, out: Path) -> dict:
    from .report import write_plots
    from .report_html import write_report
    from .trainer import load_checkpoint

    spec, trials = exp.spec, exp.trials
    choice = exp.best()
    state = load_checkpoint(choice.checkpoint)
    data_dir = Path(state["config"]["data_dir"])
    manifest = read_manifest(data_dir)
    split = "test" if "test" in manifest["splits"] else "val"
    data = load_dataset(data_dir, splits=("train", "val", split))
    probs = predict_on_cluster(state, data.images[split])
    y_pred = probs.argmax(1)
    names = state["class_names"]
    pre = predictions_frame(data.ids[split], probs, names)
    write_csv(out / "pre.csv", pre)
    metrics = split_metrics(data.labels[split], y_pred, names, split)
    regret = early_stopping_cost(trials, spec)
    ties = evaluate_ties(exp, choice, state, data, predict_on_cluster)  # paired, on the winner's validation
    metrics.update(_search_metrics(exp, choice, state["config"], regret, ties))
    metrics["evaluated_split"] = split
    table = _with_audit(exp.frame(), regret)
    if spec.multi_objective:  # a single-objective search's files stay as they were
        front = exp.front()
        reuse = {(choice.trial_id, choice.epoch): probs}  # the winner's predictions, when it is a member
        metrics["pareto"] = write_front(out, front, spec, data, split, manifest["image_shape"], reuse)
        table = _with_front(table, front)
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    write_csv(out / "trials.csv", table)
    save_models(out, state, manifest["image_shape"])
    write_plots(
        out, trials, choice, spec, data.images[split], data.labels[split], probs, names, metrics["confusion_matrix"]
    )
    try:
        write_report(exp, out)
    except ModuleNotFoundError as exc:  # a machine without plotly still gets every result above
        print(
            f"raydigits: final/report.html skipped ({exc}); `python launch.py report {exp.location}` builds it "
            "where plotly is installed",
            flush=True,
        )
    return metrics


def write_front(out: Path, front: Front, spec: SearchSpec, data, split: str, image_shape, reuse: dict) -> dict:
    """pareto.csv and pareto/<trial id>/ (save_models, as the winner's) for every front member, each
    evaluated on `split` (reported only: the front was chosen on validation). Returns metrics.json's
    "pareto": the objectives, the members' rows, and the trials off the front with why."""
    import pandas as pd

    from .trainer import load_checkpoint

    rows = []
    for p in front.members:
        assert p.choice is not None
        state = load_checkpoint(p.choice.checkpoint)
        probs = reuse.get((p.trial_id, p.epoch))
        if probs is None:
            probs = predict_on_cluster(state, data.images[split])
        folder = out / PARETO_DIR / p.trial_id
        folder.mkdir(parents=True)
        save_models(folder, state, image_shape)
        rows.append(
            {
                "trial_id": p.trial_id,
                "epoch": p.epoch,
                **p.values,
                "val_acc": p.val_acc,
                f"{split}_accuracy": float((probs.argmax(1) == data.labels[split]).mean()),
                **{k: v for k, v in p.costs.items() if k not in p.values},
                "model_pt": f"{PARETO_DIR}/{p.trial_id}/best_model.pt",
                "model_pt2": f"{PARETO_DIR}/{p.trial_id}/best_model.pt2",
                **{f"param.{k}": v for k, v in p.config.items()},
            }
        )
    columns = list(dict.fromkeys(k for r in rows for k in r)) or ["trial_id", "epoch", *dict(spec.objective_list)]
    write_csv(out / PARETO_FILE, pd.DataFrame(rows, columns=columns))
    return {
        "objectives": dict(spec.objective_list),
        "constraints": [b.describe(k) for k, b in spec.constraints.items()],
        "evaluated_split": split,
        "members": rows,
        "off_front": {
            p.trial_id: f"{p.status}{': ' + p.why if p.why else ''}" for p in front.points if p.status != "front"
        },
    }


def _with_front(table, front: Front):
    """trials.csv of a multi-objective search: each trial's place against the objectives (front,
    dominated, infeasible, unusable), its chosen epoch, the objectives there and its costs."""
    points = {p.trial_id: p for p in front.points}
    ids = list(table["trial_id"])
    table["pareto"] = [points[t].status if t in points else "" for t in ids]
    table["pareto_why"] = [points[t].why if t in points else "" for t in ids]
    table["pareto_epoch"] = [points[t].epoch if t in points else None for t in ids]
    for metric, _ in front.objectives:
        table[f"pareto_{metric}"] = [
            points[t].values.get(metric, float("nan")) if t in points else float("nan") for t in ids
        ]
    for cost in COST_METRICS:
        table[cost] = [points[t].costs.get(cost, float("nan")) if t in points else float("nan") for t in ids]
    return table


def _search_metrics(exp: Experiment, choice, config: dict, regret, ties) -> dict:
    """metrics.json's account of the search: the chosen (trial, epoch), the trials' outcomes, the
    wall time and ETA, the paired ties (ties.py) and what early stopping cost."""
    spec, trials, run = exp.spec, exp.trials, exp.run_record
    last = max((r.get("timestamp", 0) for t in trials for r in t.results), default=0)
    counts = Counter(t.outcome for t in trials)
    effective = {spec.target(n) for n in spec.parameters}
    return {
        "best_trial": choice.trial_id,
        "best_epoch": choice.epoch,
        "epoch_note": choice.note,
        f"best_{spec.metric}": choice.value,
        "best_config": config,
        "best_params": {k: v for k, v in trial_values(spec, choice.config).items() if k in effective},
        "checkpoint": str(choice.checkpoint),
        "n_trials": len(trials),
        "n_asha_stopped": counts["asha_stopped"],
        "n_early_stopped": counts["early_stopped"],
        "n_failed": counts["error"],
        "n_diverged": counts["diverged"],
        "n_completed": counts["completed"],
        "n_oom": counts["oom"],
        "n_infeasible": counts["infeasible"],  # broke a constraint (stopped at its first result)
        "n_time_budget": counts["time_budget"] + counts["not_started"],
        "search_wall_time_s": float((run.finished or last) - run.started) if run.started else None,
        "eta": eta.summary(exp.location, run.started, run.finished),  # the first estimate vs the actual
        "ties": ties_line(ties) if ties else None,
        "tied_trials": ties.tied if ties else None,
        "paired_ties": ties.to_json() if ties else None,  # per candidate: b, c, p, Holm's p; the cost
        "early_stopping": regret.to_json() if regret else None,  # the audit's verdict (experiment/audit.py)
    }


def _with_audit(table, regret):
    """trials.csv with, for each audited trial, the trial that continued it and where that ended."""
    audited = {a.trial_id: a for a in (regret.audited if regret else ())}
    table["audited_by"] = [audited[t].audit_trial_id if t in audited else "" for t in table["trial_id"]]
    table["value_at_max_t"] = [audited[t].at_max_t if t in audited else float("nan") for t in table["trial_id"]]
    return table


def print_summary(out: Location | Path, m: dict, spec: SearchSpec) -> None:
    print("\n== raydigits: final ==")
    print(
        f"best trial {m['best_trial']} (epoch {m['best_epoch']}): {spec.metric} "
        f"{m[f'best_{spec.metric}']:.4f}; {m['evaluated_split']} accuracy {m[m['evaluated_split'] + '_accuracy']:.4f}"
        + (
            ""
            if m["evaluated_split"] == "test"
            else " (the dataset has no test split: this is the validation "
            "split the best trial was chosen on, not an unbiased test)"
        )
    )
    if m.get("epoch_note"):
        print(f"epoch {m['best_epoch']}: {m['epoch_note']}")
    if m.get("ties"):
        print(f"ties: {m['ties']}")
    if m.get("early_stopping"):
        print(f"audit: {m['early_stopping']['line']}")
    print(f"params: {json.dumps(m['best_params'], default=str)}")
    print(
        f"trials: {m['n_trials']} ({m['n_completed']} completed, {m['n_asha_stopped']} stopped by ASHA, "
        f"{m['n_early_stopped']} early-stopped, {m['n_time_budget']} cut by the time budget, "
        f"{m['n_diverged']} diverged, {m['n_oom']} out of memory, {m['n_failed']} failed"
        + (
            f", {m.get('n_infeasible', 0)} infeasible: {'; '.join(b.describe(k) for k, b in spec.constraints.items())}"
            if spec.constraints
            else ""
        )
        + ")"
    )
    if m.get("eta"):
        print(eta.summary_line(m["eta"]))
    if m.get("pareto"):
        print_front(m["pareto"], out)
    print(f"files: {out}/ (report.html, pre.csv, metrics.json, trials.csv, best_model.pt, best_model.pt2, *.png)")


def print_front(pareto: dict, out: Location | Path) -> None:
    """The front, one line per member: its objectives on validation, the test accuracy beside them."""
    split = pareto["evaluated_split"]
    objectives = ", ".join(f"{k} {v}" for k, v in pareto["objectives"].items())
    print(
        f"Pareto front on validation ({objectives}): {len(pareto['members'])} of "
        f"{len(pareto['members']) + len(pareto['off_front'])} trials; {out}/{PARETO_FILE}"
    )
    for r in pareto["members"]:
        values = ", ".join(f"{k} {r[k]:.4g}" for k in pareto["objectives"])
        print(f"  {r['trial_id']} (epoch {r['epoch']}): {values}; {split} accuracy {r[f'{split}_accuracy']:.4f}")


def chosen_member(exp: Experiment, pick: str | None, trial: str | None):
    """The front member `--pick BOUNDS` (the most accurate within them, on validation) or `--trial ID`
    names, and its best_model.pt under final/; a UserError before anything is written otherwise."""
    from .experiment.front import parse_pick

    if pick is not None and trial is not None:
        raise UserError("--pick and --trial: give one of them")
    if pick is not None:
        parse_pick(pick)  # bad syntax: said before the experiment's trials are read
    if not exp.spec.multi_objective:
        raise UserError(
            f"--{'pick' if pick is not None else 'trial'}: {exp.location} is a single-objective search (no "
            "objectives: in its space), so it has one best model and no front; leave the option out"
        )
    front = exp.front()
    member = front.pick(pick) if pick is not None else front.member(str(trial))
    return member, f"{PARETO_DIR}/{member.trial_id}/best_model.pt"


def describe_member(member, model: str) -> str:
    values = ", ".join(f"{k} {v:.4g}" for k, v in member.values.items())
    return f"front member {member.trial_id} (epoch {member.epoch}): {values}; its model: {model} (and .pt2)"


def export_images(
    exp: Experiment,
    images_dir: Path | None,
    out_file: Path | None,
    skip_corrupt: bool,
    force: bool = False,
    pick: str | None = None,
    trial: str | None = None,
) -> Path | None:
    """pre.csv for every image under `images_dir`, from final/best_model.pt or, with `pick` / `trial`, a
    front member's final/pareto/<trial id>/best_model.pt (on this machine's CPU); without images, the
    member chosen is only said. Never writes over one of its input images; over an existing file only
    with `force`."""
    from .data.sources import list_images, read_images
    from .trainer import load_checkpoint

    name, member = "best_model.pt", None
    if pick is not None or trial is not None:
        member, name = chosen_member(exp, pick, trial)
    command = "export --pick" if pick is not None else "export --trial" if trial is not None else "export --images"
    final = exp.final_state()  # a final/ older than the trials holds a model that may not be the best
    final.require(command, exp.location)
    final.read(name)  # checked against its marker before it is loaded
    if member is not None:
        print(describe_member(member, str(exp.final / name)), flush=True)
    if images_dir is None:
        return None
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UserError(f"--images {images_dir}: no such folder")
    files = list_images(images_dir)
    if not files:
        raise UserError(f"--images {images_dir}: no png/jpg/jpeg images")
    out_file = Path(out_file) if out_file else images_dir / "pre.csv"
    check_output_file(out_file, "--out", inputs=files, force=force)
    state = load_checkpoint(exp.final / name)
    h, w, c = state["input_shape"]
    got = read_images(files, images_dir, h, c, skip_corrupt)  # data/decode.py's rules, as prepare
    if not got.images:
        raise UserError(f"--images {images_dir}: no readable images" + got.summary())
    probs = predict_state(state, np.stack(got.images), "cpu")
    write_csv(out_file, predictions_frame(got.ids, probs, state["class_names"]))
    print(f"wrote {out_file}: {len(got.ids)} predictions (the model takes {c} channel(s))" + got.summary())
    return out_file


def check_output_file(out: Path, what: str, inputs=(), force: bool = False) -> None:
    """Refuse, before any work, an output file that is one of the inputs (even with --force), that
    is a folder, or that exists (unless --force), or whose folder cannot be written."""
    target = Path(out).resolve()
    if any(target == Path(f).resolve() for f in inputs):
        raise UserError(f"{what} {out}: that is one of the input images; write the predictions elsewhere")
    if target.is_dir():
        raise UserError(f"{what} {out}: is a folder; give a file path such as {Path(out) / 'pre.csv'}")
    if target.exists() and not force:
        raise UserError(f"{what} {out}: already exists; pass --force to replace it")
    Location.parse(target.parent).check_writable(what, shown=out)
