"""The final stage, conducted: read the experiment (experiment/: trials, outcomes, the best
(trial, epoch) on validation), evaluate that checkpoint on the test split as a Ray task
(inference.py), and write final/: pre.csv, metrics.json, trials.csv (evaluation.py), plots
(report.py), report.html (report_html.py), best_model.pt and the `torch.export` program
best_model.pt2. Also `export --images`: predict a folder of images with best_model.pt."""

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
from .experiment import Experiment, ties_line
from .experiment.audit import early_stopping_cost
from .experiment.completion import write_marker
from .experiment.layout import FINAL_MARKER
from .inference import predict_state, save_models
from .search import eta
from .spec import SearchSpec, trial_values
from .storage import Location, staged
from .ties import evaluate_ties

TASK_CPUS = 1  # the evaluation task's CPUs (and one GPU when the cluster has one)


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
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    write_csv(out / "trials.csv", _with_audit(exp.frame(), regret))
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
        f"{m['n_diverged']} diverged, {m['n_oom']} out of memory, {m['n_failed']} failed)"
    )
    if m.get("eta"):
        print(eta.summary_line(m["eta"]))
    print(f"files: {out}/ (report.html, pre.csv, metrics.json, trials.csv, best_model.pt, best_model.pt2, *.png)")


def export_images(
    exp: Experiment, images_dir: Path, out_file: Path | None, skip_corrupt: bool, force: bool = False
) -> Path:
    """pre.csv for every image under `images_dir`, from final/best_model.pt (on this machine's CPU).
    Never writes over one of its input images; over an existing file only with `force`."""
    from .data.sources import list_images, read_images
    from .trainer import load_checkpoint

    images_dir = Path(images_dir)
    model_file = exp.final / "best_model.pt"
    final = exp.final_state()  # a final/ older than the trials holds a model that may not be the best
    final.require("export --images", exp.location)
    final.read("best_model.pt")  # checked against its marker before it is loaded
    if not images_dir.is_dir():
        raise UserError(f"--images {images_dir}: no such folder")
    files = list_images(images_dir)
    if not files:
        raise UserError(f"--images {images_dir}: no png/jpg/jpeg images")
    out_file = Path(out_file) if out_file else images_dir / "pre.csv"
    check_output_file(out_file, "--out", inputs=files, force=force)
    state = load_checkpoint(model_file)
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
