"""The final stage: pick the best (trial, epoch) on validation, evaluate that checkpoint on the test
split as a Ray task, and write final/: pre.csv, metrics.json, trials.csv, plots, best_model.pt and a
self-contained `torch.export` program (best_model.pt2)."""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .atomic import atomic_path, write_text
from .data import load_dataset
from .data.store import read_manifest
from .errors import UserError
from .search.runner import RUN_FILE
from .search.spec import SearchSpec, trial_values
from .search.state import trial_states
from .search.trainable import CHECKPOINT_FILE

FINAL_DIR = "final"
INTERNAL = ["path", "results"]  # load_trials columns kept out of trials.csv


@dataclass
class Choice:
    trial_id: str
    epoch: int
    value: float
    checkpoint: Path
    config: dict


# ------------------------------------------------------------------ reading the experiment
def load_trials(exp_dir: Path, spec: SearchSpec) -> pd.DataFrame:
    """One row per trial: id, status, outcome, epochs, best val, params, path, and its reported
    results (read once here; `INTERNAL` columns are not written to trials.csv)."""
    rows = []
    for trial in trial_states(exp_dir):
        path = trial["path"]
        results = _results(path)
        diverged = any(r.get("diverged") for r in results)
        epochs = max((int(r["epoch"]) for r in results), default=0)
        stop = next((r.get("stop_reason") for r in reversed(results) if r.get("stop_reason")), "")
        if trial["status"] == "ERROR":
            outcome = "error"
        elif diverged:
            outcome = "diverged"
        elif stop == "oom":
            outcome = "oom"  # out of GPU memory: ended cleanly, never a candidate
        elif trial["status"] in ("RUNNING", "PENDING", "PAUSED"):
            outcome = "interrupted"
        elif stop == "early_stop":
            outcome = "early_stopped"
        elif epochs == 0:
            outcome = "not_started"  # the time budget ran out first
        elif epochs < spec.epochs:
            # ASHA stops trials at its rungs only; a stop between rungs was the time budget's
            outcome = "asha_stopped" if epochs in asha_rungs(spec) else "time_budget"
        else:
            outcome = "completed"
        vals = [r[spec.metric] for r in results if r.get(spec.metric) is not None and not r.get("diverged")]
        best = (max(vals) if spec.mode == "max" else min(vals)) if vals else float("nan")
        row = {"trial_id": trial["trial_id"], "status": trial["status"], "outcome": outcome, "epochs": epochs,
               f"best_{spec.metric}": best, "path": str(path), "results": results}
        row["retries"] = trial["num_failures"]
        row.update({f"param.{k}": v for k, v in trial["config"].items()})
        rows.append(row)
    if not rows:
        raise UserError(f"{exp_dir}: the experiment has no trials")
    return pd.DataFrame(rows).sort_values("trial_id").reset_index(drop=True)


def asha_rungs(spec: SearchSpec) -> set[int]:
    """Epochs at which ASHA compares trials: grace_period * reduction_factor**k below max_t."""
    if spec.scheduler.type != "asha":
        return set()
    rungs, t = set(), float(spec.scheduler.grace_period)
    while t < spec.epochs:
        rungs.add(int(t))
        t *= spec.scheduler.reduction_factor
    return rungs


def _results(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    if not f.exists():
        return []
    out = []
    for line in f.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return out


def choose_best(trials: pd.DataFrame, spec: SearchSpec) -> Choice:
    """The best reported epoch on validation over every usable trial; errored and diverged trials
    are never chosen. Its own checkpoint (kept by CheckpointConfig's best-by-metric rule)."""
    candidates = []
    for _, t in trials.iterrows():
        if t["outcome"] in ("error", "diverged", "oom"):
            continue
        for r in t["results"]:
            v = r.get(spec.metric)
            if v is None or not math.isfinite(v) or not r.get("checkpoint_dir_name"):
                continue
            ck = Path(t["path"]) / r["checkpoint_dir_name"] / CHECKPOINT_FILE
            candidates.append((v if spec.mode == "max" else -v, -int(r["epoch"]), t["trial_id"], ck, r))
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    for score, neg_epoch, trial_id, ck, r in candidates:
        if ck.exists():
            return Choice(trial_id, -neg_epoch, r[spec.metric], ck, r.get("config", {}))
    raise UserError("no usable trial: every trial errored, diverged, ran out of memory, or left no checkpoint")


# ------------------------------------------------------------------ evaluation (a Ray task)
def _predict(state: dict, images: np.ndarray, num_gpus: float) -> np.ndarray:
    from .config import make_config
    from .models import build_model
    from .pipeline import Preprocess, to_device_uint8
    cfg = make_config({**state["config"], "pretrained": None,
                       "device": "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"})
    device = torch.device(cfg.device)
    model = build_model(cfg, len(state["class_names"]))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    pre = Preprocess(cfg, device)
    x_all = to_device_uint8(images, device)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), cfg.eval_batch_size):
            out.append(torch.softmax(model(pre.eval(x_all[i:i + cfg.eval_batch_size])).float(), 1).cpu())
    return torch.cat(out).numpy()


def predict_on_cluster(state: dict, images: np.ndarray) -> np.ndarray:
    """Run `_predict` as a Ray task: on a GPU when the cluster has one."""
    import ray
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    task = ray.remote(num_cpus=1, num_gpus=gpus)(_predict)
    return ray.get(task.remote(state, images, gpus))


# ------------------------------------------------------------------ outputs
def write_csv(path: Path, df: pd.DataFrame) -> None:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    write_text(path, buf.getvalue())


def predictions_frame(ids: list[str], probs: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    idx = probs.argmax(1)
    df = pd.DataFrame({"image_id": ids, "label": [class_names[i] for i in idx],
                       "score": probs[np.arange(len(idx)), idx].round(6)})
    if df["image_id"].duplicated().any():
        raise UserError(f"duplicate image ids, e.g. {df['image_id'][df['image_id'].duplicated()].iloc[0]}")
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def split_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], split: str) -> dict:
    """Accuracy (as `<split>_accuracy`: a dataset without a test split is never reported as 'test'),
    per-class and macro precision/recall/F1, confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
    labels = list(range(len(class_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {f"{split}_accuracy": float(accuracy_score(y_true, y_pred)),
            "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                              "support": int(s[i])} for i, c in enumerate(class_names)},
            "macro": {"precision": float(mp), "recall": float(mr), "f1": float(mf)},
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist()}


class Exported(torch.nn.Module):
    """uint8 images (N, H, W, C) → class probabilities, with the training preprocessing inside."""

    def __init__(self, model, size: int, mean, std):
        super().__init__()
        self.model, self.size = model, size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                            align_corners=False, antialias=x.shape[-1] > self.size)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return torch.softmax(self.model((x - self.mean) / self.std), 1)


def save_models(out: Path, state: dict, input_shape: list[int]) -> None:
    from .config import make_config
    from .models import build_model
    from .pipeline import IMAGENET_MEAN, IMAGENET_STD
    best = {"model": state["model"], "config": state["config"], "class_names": state["class_names"],
            "input_shape": list(input_shape), "epoch": state["epoch"]}
    with atomic_path(out / "best_model.pt") as tmp:
        torch.save(best, tmp)
    cfg = make_config({**state["config"], "pretrained": None, "device": "cpu"})
    model = build_model(cfg, len(state["class_names"]))
    model.load_state_dict(state["model"])
    wrapper = Exported(model.eval(), cfg.img_size, IMAGENET_MEAN, IMAGENET_STD).eval()
    example = torch.zeros([2, *input_shape], dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with torch.no_grad():
        program = torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}})
    with atomic_path(out / "best_model.pt2") as tmp:  # torch.export.load(f).module()(uint8 NHWC) → probs
        torch.export.save(program, tmp)
    write_text(out / "classes.json", json.dumps(state["class_names"]))


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


# ------------------------------------------------------------------ predicting a folder of images
def export_images(exp_dir: Path, images_dir: Path, out_file: Path | None, skip_corrupt: bool) -> Path:
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
    probs = _predict(state, np.stack(arrays), 0.0)
    out_file = Path(out_file) if out_file else images_dir / "pre.csv"
    write_csv(out_file, predictions_frame(ids, probs, state["class_names"]))
    print(f"wrote {out_file}: {len(ids)} predictions" + (f"; skipped {len(skipped)} unreadable: {skipped}" if skipped else ""))
    return out_file
