"""Plots of a finished search: learning curves of every trial (the best highlighted, ASHA-stopped
trials visibly shorter), the test confusion matrix, and the most confident test mistakes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path

PNG_DPI = 110
MISTAKES_SHOWN = 36  # misclassified.png: the most confident mistakes, at most this many
MISTAKE_COLUMNS = 6


def _pyplot():
    """pyplot on the file-only Agg backend, chosen when a plot is first drawn (not at import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=PNG_DPI, bbox_inches="tight")
    _pyplot().close(fig)


def learning_curves(path: Path, trials, choice, spec) -> None:
    fig, ax = _pyplot().subplots(figsize=(8, 5))
    styles = {"asha_stopped": ":", "early_stopped": "--", "error": "-.", "diverged": "-."}
    for t in trials:
        rows = [r for r in t.results if r.get(spec.metric) is not None]
        if not rows:
            continue
        best = t.trial_id == choice.trial_id
        ax.plot(
            [r["epoch"] for r in rows],
            [r[spec.metric] for r in rows],
            marker="o",
            ms=3,
            lw=3 if best else 1,
            alpha=1 if best else 0.6,
            ls=styles.get(t.outcome, "-"),
            color="crimson" if best else None,
            label=f"{t.trial_id} ({t.outcome})" + (" BEST" if best else ""),
        )
    ax.axvline(choice.epoch, color="crimson", lw=0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel(spec.metric)
    ax.set_title(f"{spec.name}: {spec.metric} per epoch ({len(trials)} trials; dotted = stopped by ASHA)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    _save(fig, path)


def confusion(path: Path, cm, class_names) -> None:
    cm = np.asarray(cm)
    fig, ax = _pyplot().subplots(figsize=(1 + 0.6 * len(class_names), 1 + 0.55 * len(class_names)))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color="white" if i == j else "black")
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("test confusion matrix")
    _save(fig, path)


def misclassified(path: Path, images, labels, probs, class_names, n: int = MISTAKES_SHOWN) -> None:
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:n]
    cols = MISTAKE_COLUMNS
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = _pyplot().subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, i in zip(np.ravel(axes), wrong):
        img = images[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
        ax.set_title(f"true {class_names[labels[i]]}\npred {class_names[pred[i]]} {probs[i, pred[i]]:.2f}", fontsize=7)
    fig.suptitle(f"most confident mistakes ({len(np.flatnonzero(pred != labels))} in all)")
    _save(fig, path)


def write_plots(out: Path, trials, choice, spec, images, labels, probs, class_names, cm) -> None:
    learning_curves(out / "learning_curves.png", trials, choice, spec)
    confusion(out / "confusion_matrix.png", cm, class_names)
    misclassified(out / "misclassified.png", images, labels, probs, class_names)
