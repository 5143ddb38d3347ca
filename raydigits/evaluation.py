"""What the final stage writes from predictions: pre.csv rows, per-split metrics, CSV files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_text
from .errors import UserError

SCORE_DECIMALS = 6  # pre.csv's score column


def write_csv(path: Path, df: pd.DataFrame) -> None:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    write_text(path, buf.getvalue())


def predictions_frame(ids: list[str], probs: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    idx = probs.argmax(1)
    df = pd.DataFrame(
        {
            "image_id": ids,
            "label": [class_names[i] for i in idx],
            "score": probs[np.arange(len(idx)), idx].round(SCORE_DECIMALS),
        }
    )
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
    return {
        f"{split}_accuracy": float(accuracy_score(y_true, y_pred)),
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(class_names)
        },
        "macro": {"precision": float(mp), "recall": float(mr), "f1": float(mf)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
