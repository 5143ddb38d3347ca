"""The final stage, conducted: read the experiment (experiment.py: trials, outcomes, the best
(trial, epoch) on validation), evaluate that checkpoint on the test split as a Ray task
(inference.py), and write final/: pre.csv, metrics.json, trials.csv (evaluation.py), plots
(report.py), best_model.pt and the `torch.export` program best_model.pt2. Also `export --images`:
predict a folder of images with best_model.pt."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import write_text
from .data import load_dataset
from .data.store import read_manifest
from .errors import UserError
from .evaluation import predictions_frame, split_metrics, write_csv
from .experiment import INTERNAL, choose_best, load_trials
from .inference import predict_state, save_models
from .search.runner import RUN_FILE
from .search.spec import SearchSpec, trial_values

FINAL_DIR = "final"
TASK_CPUS = 1  # the evaluation task's CPUs (and one GPU when the cluster has one)


def predict_on_cluster(state: dict, images: np.ndarray) -> np.ndarray:
    """`inference.predict_state` as a Ray task: on a GPU when the cluster has one."""
    import ray
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    task = ray.remote(num_cpus=TASK_CPUS, num_gpus=gpus)(predict_state)
    return ray.get(task.remote(state, images, "cuda" if gpus else "cpu"))


def run_final(exp_dir: Path, spec: SearchSpec) -> dict:
    """Everything in <exp_dir>/final/. Returns metrics.json's content."""
    from .report import write_plots
    from .trainer import load_checkpoint
    exp_dir = Path(exp_dir).resolve()
    out = exp_dir / FINAL_DIR
    out.mkdir(parents=True, exist_ok=True)
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
    run = json.loads((exp_dir / RUN_FILE).read_text()) if (exp_dir / RUN_FILE).exists() else {}
    last = max((r.get("timestamp", 0) for rs in trials["results"] for r in rs), default=0)
    counts = trials["outcome"].value_counts().to_dict()
    effective = {spec.target(n) for n in spec.parameters}
    metrics.update({
        "evaluated_split": split, "best_trial": choice.trial_id, "best_epoch": choice.epoch,
        f"best_{spec.metric}": choice.value, "best_config": state["config"],
        "best_params": {k: v for k, v in trial_values(spec, choice.config).items() if k in effective},
        "checkpoint": str(choice.checkpoint),
        "n_trials": int(len(trials)), "n_asha_stopped": int(counts.get("asha_stopped", 0)),
        "n_early_stopped": int(counts.get("early_stopped", 0)), "n_failed": int(counts.get("error", 0)),
        "n_diverged": int(counts.get("diverged", 0)), "n_completed": int(counts.get("completed", 0)),
        "n_oom": int(counts.get("oom", 0)),
        "n_time_budget": int(counts.get("time_budget", 0) + counts.get("not_started", 0)),
        "search_wall_time_s": float(run.get("finished", last) - run["started"]) if run.get("started") else None,
    })
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    write_csv(out / "trials.csv", trials.drop(columns=INTERNAL))
    save_models(out, state, manifest["image_shape"])
    write_plots(out, trials, choice, spec, data.images[split], data.labels[split], probs, names,
                metrics["confusion_matrix"])
    print_summary(out, metrics, spec)
    return metrics


def print_summary(out: Path, m: dict, spec: SearchSpec) -> None:
    print("\n== raydigits: final ==")
    print(f"best trial {m['best_trial']} (epoch {m['best_epoch']}): {spec.metric} "
          f"{m[f'best_{spec.metric}']:.4f}; {m['evaluated_split']} accuracy {m[m['evaluated_split'] + '_accuracy']:.4f}"
          + ("" if m["evaluated_split"] == "test" else " (the dataset has no test split: this is the validation "
                                                       "split the best trial was chosen on, not an unbiased test)"))
    print(f"params: {json.dumps(m['best_params'], default=str)}")
    print(f"trials: {m['n_trials']} ({m['n_completed']} completed, {m['n_asha_stopped']} stopped by ASHA, "
          f"{m['n_early_stopped']} early-stopped, {m['n_time_budget']} cut by the time budget, "
          f"{m['n_diverged']} diverged, {m['n_oom']} out of memory, {m['n_failed']} failed)")
    print(f"files: {out}/ (pre.csv, metrics.json, trials.csv, best_model.pt, best_model.pt2, *.png)")


def export_images(exp_dir: Path, images_dir: Path, out_file: Path | None, skip_corrupt: bool) -> Path:
    """pre.csv for every image under `images_dir`, from final/best_model.pt (on this machine's CPU)."""
    from .data.sources import list_images, read_images
    from .trainer import load_checkpoint
    exp_dir, images_dir = Path(exp_dir).resolve(), Path(images_dir)
    model_file = exp_dir / FINAL_DIR / "best_model.pt"
    if not model_file.exists():
        raise UserError(f"{model_file}: missing; run `python launch.py export {exp_dir}` first")
    state = load_checkpoint(model_file)
    if not images_dir.is_dir():
        raise UserError(f"--images {images_dir}: no such folder")
    h, w, c = state["input_shape"]
    files = list_images(images_dir)
    if not files:
        raise UserError(f"--images {images_dir}: no png/jpg/jpeg images")
    arrays, ids, skipped = read_images(files, images_dir, h, c, skip_corrupt)
    if not arrays:
        raise UserError(f"--images {images_dir}: no readable images")
    probs = predict_state(state, np.stack(arrays), "cpu")
    out_file = Path(out_file) if out_file else images_dir / "pre.csv"
    write_csv(out_file, predictions_frame(ids, probs, state["class_names"]))
    print(f"wrote {out_file}: {len(ids)} predictions" + (f"; skipped {len(skipped)} unreadable: {skipped}" if skipped else ""))
    return out_file
