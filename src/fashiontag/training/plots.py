"""matplotlib figures for reports: class distributions, confusion matrices, training curves, example grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402


def class_distributions(path: Path, counts: dict[str, dict[str, int]], title: str = "training photos per class") -> None:
    """One horizontal bar chart per task (the 25 largest classes)."""
    tasks = list(counts)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 7), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        items = sorted(counts[t].items(), key=lambda kv: -kv[1])[:25]
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#4477aa")
        ax.set_title(f"{t} ({len(counts[t])} classes)", fontsize=10)
        ax.tick_params(labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def confusion(path: Path, matrix: list[list[int]], classes: list[str], task: str) -> None:
    cm = np.asarray(matrix)
    # Row-normalised: with skewed classes, raw counts hide how the rare ones fare.
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(5, 0.28 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    disp = ConfusionMatrixDisplay(norm, display_labels=classes)
    disp.plot(ax=ax, include_values=len(classes) <= 12, values_format=".2f", colorbar=False, cmap="Blues",
              xticks_rotation="vertical")
    ax.set_title(f"{task}: confusion matrix (rows: true class, normalised)")
    ax.tick_params(labelsize=7 if len(classes) > 20 else 9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def training_curves(path: Path, history: list[dict]) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    a.plot(epochs, [h["train_loss"] for h in history], marker="o")
    a.set(title="training loss", xlabel="epoch")
    for t in history[0]["val_acc"]:
        b.plot(epochs, [h["val_acc"][t] for h in history], marker=".", label=t)
    b.set(title="validation accuracy", xlabel="epoch")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def examples(path: Path, pixels: np.ndarray, truth: list[str], pred: list[str], task: str, n: int = 8) -> None:
    """A row of correct and a row of wrong predictions for one task."""
    right = [i for i in range(len(truth)) if truth[i] == pred[i]][:n]
    wrong = [i for i in range(len(truth)) if truth[i] != pred[i]][:n]
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 5), squeeze=False)
    for r, (idx, label) in enumerate(((right, "correct"), (wrong, "wrong"))):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(idx):
                i = idx[c]
                ax.imshow(pixels[i])
                ax.set_title(f"{pred[i]}" if r == 0 else f"said {pred[i]}\nis {truth[i]}",
                             fontsize=7, color="green" if r == 0 else "red")
        axes[r][0].text(-0.3, 0.5, label, transform=axes[r][0].transAxes, rotation=90, va="center")
    fig.suptitle(f"{task}: examples")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report_plots(out: Path, ds, rows: np.ndarray, pixels: np.ndarray, probs: dict, chosen: dict, meta: dict,
                 metrics: dict) -> dict[str, str]:
    """Every figure of an evaluation report; returns name -> file name relative to `out`."""
    figures = {}
    counts = {t: dict(zip(ds.vocabs[t], ds.class_counts(t).tolist())) for t in ds.vocabs}
    class_distributions(out / "class_distributions.png", counts)
    figures["distributions"] = "class_distributions.png"
    if meta.get("history"):
        training_curves(out / "training_curves.png", meta["history"])
        figures["curves"] = "training_curves.png"
    for t, classes in ds.vocabs.items():
        if "confusion" not in metrics[t]:  # multi-label: the per-class table says it
            continue
        confusion(out / f"confusion_{t}.png", metrics[t]["confusion"], classes, t)
        figures[f"confusion_{t}"] = f"confusion_{t}.png"
        y = ds.targets[t][rows]
        known = np.flatnonzero(y >= 0)
        examples(out / f"examples_{t}.png", pixels[known], [classes[i] for i in y[known]],
                 [classes[i] for i in chosen[t][known]], t)
        figures[f"examples_{t}"] = f"examples_{t}.png"
    return figures


def risk_coverage(path: Path, confidence: dict[str, np.ndarray], correct: dict[str, np.ndarray],
                  thresholds: dict[str, float]) -> None:
    """Per task, the error rate of the tags accepted against the share accepted, most confident first; a dot
    where the model's own threshold lies."""
    from fashiontag.inference.thresholds import at_threshold, ranked
    fig, ax = plt.subplots(figsize=(7, 5))
    for t in confidence:
        if len(confidence[t]) == 0:
            continue
        _, coverage, precision = ranked(confidence[t], correct[t])
        line, = ax.plot(coverage, 1 - precision, label=t)
        a = at_threshold(confidence[t], correct[t], thresholds.get(t, 0.0))
        if a["precision"] is not None:
            ax.plot([a["coverage"]], [1 - a["precision"]], "o", color=line.get_color())
    ax.axhline(0.02, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="coverage (share of photos accepted without review)", ylabel="risk (error rate of those)",
           title="risk-coverage: dashed at 2% (98% precision), dots at the model's thresholds", ylim=(0, None))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def robustness(path: Path, runs: list[dict], tasks: tuple[str, ...] = ("gender", "subCategory", "articleType",
                                                                      "baseColour")) -> None:
    """Accuracy per change to the photo, one panel per task, one bar per model; clean accuracy as a line."""
    tasks = [t for t in tasks if t in runs[0]["accuracy"]["clean"]] or list(runs[0]["accuracy"]["clean"])[:4]
    changes = list(runs[0]["accuracy"])
    y = np.arange(len(changes))
    height = 0.8 / len(runs)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks) + 2.5, 0.32 * len(changes) + 1.5),
                             sharey=True, squeeze=False)
    colours = ["#bbbbbb", "#4477aa", "#ee6677", "#228833"]
    for ax, t in zip(axes[0], tasks):
        for i, run in enumerate(runs):
            acc = [run["accuracy"][c][t] for c in changes]
            ax.barh(y + i * height, acc, height, color=colours[i % len(colours)], label=Path(run["model"]).name
                    if Path(run["model"]).name != "best" else Path(run["model"]).parent.name)
            ax.axvline(run["accuracy"]["clean"][t], color=colours[i % len(colours)], lw=0.8, ls="--")
        ax.set_title(f"{t} accuracy (%)", fontsize=10)
        ax.set_xlim(max(0, min(min(r["accuracy"][c][t] for c in changes) for r in runs) - 5), 100)
        ax.tick_params(labelsize=8)
    axes[0][0].set_yticks(y + height * (len(runs) - 1) / 2, changes)
    axes[0][0].invert_yaxis()
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
