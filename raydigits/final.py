"""The final stage, conducted: read the experiment (experiment.py: trials, outcomes, the best
(trial, epoch) on validation), evaluate that checkpoint on the test split as a Ray task
(inference.py), and write final/: pre.csv, metrics.json, trials.csv (evaluation.py), plots
(report.py), report.html (report_html.py), best_model.pt and the `torch.export` program
best_model.pt2. Also `export --images`: predict a folder of images with best_model.pt."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import write_text
from .data import load_dataset
from .data.store import read_manifest
from .errors import UserError
from .evaluation import predictions_frame, split_metrics, write_csv
from .experiment import INTERNAL, choose_best, load_trials, statistical_ties, ties_line
from .inference import predict_state, save_models
from .search import eta
from .search.runner import read_run
from .spec import SearchSpec, trial_values
from .storage import Location, as_location, staged

FINAL_DIR = "final"
TASK_CPUS = 1  # the evaluation task's CPUs (and one GPU when the cluster has one)


def predict_on_cluster(state: dict, images: np.ndarray) -> np.ndarray:
    """`inference.predict_state` as a Ray task: on a GPU when the cluster has one."""
    import ray
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    task = ray.remote(num_cpus=TASK_CPUS, num_gpus=gpus)(predict_state)
    return ray.get(task.remote(state, images, "cuda" if gpus else "cpu"))


def run_final(exp_dir: Location | str, spec: SearchSpec) -> dict:
    """Everything in <exp_dir>/final/ (written locally, then published there when the experiment
    lives in remote storage). Returns metrics.json's content."""
    exp_dir = as_location(exp_dir)
    with staged(exp_dir / FINAL_DIR) as out:
        metrics = _final(exp_dir, spec, out)
    print_summary(exp_dir / FINAL_DIR, metrics, spec)
    return metrics


def _final(exp_dir: Location, spec: SearchSpec, out: Path) -> dict:
    from .report import write_plots
    from .report_html import write_report
    from .trainer import load_checkpoint
    trials = load_trials(exp_dir, spec)
    choice = choose_best(trials, spec)
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
    run = read_run(exp_dir)
    last = max((r.get("timestamp", 0) for rs in trials["results"] for r in rs), default=0)
    counts = trials["outcome"].value_counts().to_dict()
    ties = statistical_ties(trials, spec, choice.trial_id)
    effective = {spec.target(n) for n in spec.parameters}
    metrics.update({
        "evaluated_split": split, "best_trial": choice.trial_id, "best_epoch": choice.epoch, "epoch_note": choice.note,
        f"best_{spec.metric}": choice.value, "best_config": state["config"],
        "best_params": {k: v for k, v in trial_values(spec, choice.config).items() if k in effective},
        "checkpoint": str(choice.checkpoint),
        "n_trials": int(len(trials)), "n_asha_stopped": int(counts.get("asha_stopped", 0)),
        "n_early_stopped": int(counts.get("early_stopped", 0)), "n_failed": int(counts.get("error", 0)),
        "n_diverged": int(counts.get("diverged", 0)), "n_completed": int(counts.get("completed", 0)),
        "n_oom": int(counts.get("oom", 0)),
        "n_time_budget": int(counts.get("time_budget", 0) + counts.get("not_started", 0)),
        "search_wall_time_s": float(run.get("finished", last) - run["started"]) if run.get("started") else None,
        "eta": eta.summary(exp_dir, run.get("started"), run.get("finished")),  # the first estimate vs the actual
        "ties": ties_line(ties, spec.metric) if ties else None,
        "tied_trials": [tid for tid, _ in ties.trials] if ties else None,
    })
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    write_csv(out / "trials.csv", trials.drop(columns=INTERNAL))
    save_models(out, state, manifest["image_shape"])
    write_plots(out, trials, choice, spec, data.images[split], data.labels[split], probs, names,
                metrics["confusion_matrix"])
    try:
        write_report(exp_dir, spec, out)
    except ModuleNotFoundError as exc:  # a machine without plotly still gets every result above
        print(f"raydigits: final/report.html skipped ({exc}); `python launch.py report {exp_dir}` builds it "
              "where plotly is installed", flush=True)
    return metrics


def print_summary(out: Location | Path, m: dict, spec: SearchSpec) -> None:
    print("\n== raydigits: final ==")
    print(f"best trial {m['best_trial']} (epoch {m['best_epoch']}): {spec.metric} "
          f"{m[f'best_{spec.metric}']:.4f}; {m['evaluated_split']} accuracy {m[m['evaluated_split'] + '_accuracy']:.4f}"
          + ("" if m["evaluated_split"] == "test" else " (the dataset has no test split: this is the validation "
                                                       "split the best trial was chosen on, not an unbiased test)"))
    if m.get("epoch_note"):
        print(f"epoch {m['best_epoch']}: {m['epoch_note']}")
    if m.get("ties"):
        print(f"ties: {m['ties']}")
    print(f"params: {json.dumps(m['best_params'], default=str)}")
    print(f"trials: {m['n_trials']} ({m['n_completed']} completed, {m['n_asha_stopped']} stopped by ASHA, "
          f"{m['n_early_stopped']} early-stopped, {m['n_time_budget']} cut by the time budget, "
          f"{m['n_diverged']} diverged, {m['n_oom']} out of memory, {m['n_failed']} failed)")
    if m.get("eta"):
        print(eta.summary_line(m["eta"]))
    print(f"files: {out}/ (report.html, pre.csv, metrics.json, trials.csv, best_model.pt, best_model.pt2, *.png)")


def export_images(exp_dir: Location | str, images_dir: Path, out_file: Path | None, skip_corrupt: bool,
                  force: bool = False) -> Path:
    """pre.csv for every image under `images_dir`, from final/best_model.pt (on this machine's CPU).
    Never writes over one of its input images; over an existing file only with `force`."""
    from .data.sources import list_images, read_images
    from .trainer import load_checkpoint
    exp_dir, images_dir = as_location(exp_dir), Path(images_dir)
    model_file = exp_dir / FINAL_DIR / "best_model.pt"
    if not model_file.exists():
        raise UserError(f"{model_file}: missing; run `python launch.py export {exp_dir}` first")
    if not images_dir.is_dir():
        raise UserError(f"--images {images_dir}: no such folder")
    files = list_images(images_dir)
    if not files:
        raise UserError(f"--images {images_dir}: no png/jpg/jpeg images")
    out_file = Path(out_file) if out_file else images_dir / "pre.csv"
    check_output_file(out_file, "--out", inputs=files, force=force)
    state = load_checkpoint(model_file)
    h, w, c = state["input_shape"]
    arrays, ids, skipped = read_images(files, images_dir, h, c, skip_corrupt)
    if not arrays:
        raise UserError(f"--images {images_dir}: no readable images")
    probs = predict_state(state, np.stack(arrays), "cpu")
    write_csv(out_file, predictions_frame(ids, probs, state["class_names"]))
    print(f"wrote {out_file}: {len(ids)} predictions" + (f"; skipped {len(skipped)} unreadable: {skipped}" if skipped else ""))
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
