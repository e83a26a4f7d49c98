"""The robust-overfitting figure: accuracies per epoch (train and test, clean and under
attack) beside the training loss and learning rate."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

_CURVES = (
    ("train_robust_acc", "train, PGD", "tab:red", "--"),
    ("test_robust_acc", "test, PGD", "tab:red", "-"),
    ("train_clean_acc", "train, clean", "tab:blue", "--"),
    ("test_clean_acc", "test, clean", "tab:blue", "-"),
    ("train_acc", "train, on training inputs (running)", "tab:gray", ":"),
)


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df and df[col].notna().any()


def plot_history(
    history: pd.DataFrame, path: str | os.PathLike, *, best_epoch: int | None = None, title: str | None = None
) -> Path:
    """Write the figure as a PNG (Agg canvas, no global matplotlib state) and return its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax_acc, ax_loss = fig.subplots(1, 2)
    epochs = history["epoch"] if "epoch" in history else pd.Series(range(1, len(history) + 1))
    for col, label, color, style in _CURVES:
        if _has(history, col):
            ok = history[col].notna()
            ax_acc.plot(epochs[ok], history.loc[ok, col], style, color=color, marker="o", ms=3, label=label)
    if best_epoch is not None and not (isinstance(best_epoch, float) and math.isnan(best_epoch)):
        ax_acc.axvline(best_epoch, color="k", lw=0.8, alpha=0.6, label=f"best epoch ({best_epoch})")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, loc="best", framealpha=0.8)
    ax_acc.set_title("robust overfitting curve" if _has(history, "test_robust_acc") else "accuracy")
    if _has(history, "train_loss"):
        ax_loss.plot(epochs, history["train_loss"], color="tab:green", marker="o", ms=3, label="train loss")
        ax_loss.set_ylabel("train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.grid(alpha=0.3)
    handles, labels = ax_loss.get_legend_handles_labels()
    if _has(history, "lr"):
        ax_lr = ax_loss.twinx()
        ax_lr.plot(epochs, history["lr"], color="tab:orange", lw=1, label="learning rate (epoch start)")
        ax_lr.set_ylabel("learning rate")
        h2, l2 = ax_lr.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax_loss.legend(handles, labels, fontsize=7, loc="best", framealpha=0.8)
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
