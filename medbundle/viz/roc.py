"""ROC curve plots for multi-label classifiers (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_roc_curves"]


def plot_roc_curves(
    y_true: np.ndarray, y_score: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "ROC"
) -> Path:
    """Draw one ROC curve per class (NaN labels masked) with its AUROC in the legend; save a PNG.

    Args:
        y_true: (N, C) labels in {0, 1}, NaN = unknown.
        y_score: (N, C) scores.
        class_names: C names.
        path: output PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    y_true = np.asarray(y_true, dtype=float).reshape(len(y_true), -1)
    y_score = np.asarray(y_score, dtype=float).reshape(len(y_score), -1)
    fig, ax = plt.subplots(figsize=(7, 7), dpi=100)
    cmap = plt.get_cmap("tab20")
    for c, name in enumerate(class_names):
        m = ~np.isnan(y_true[:, c])
        t, s = y_true[m, c], y_score[m, c]
        if t.size == 0 or t.min() == t.max():
            continue
        fpr, tpr, _ = roc_curve(t, s)
        ax.plot(fpr, tpr, color=cmap(c % 20), lw=1.3, label=f"{name} ({roc_auc_score(t, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
