"""PNG figures written beside the JSON they illustrate."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from edge.atomic import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on CI or a headless workstation
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path, dpi: int = 100) -> Path:
    """Write the figure atomically (temp file, then rename) and free it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def training_curves(history: Dict[str, List[float]], fine_tune_start: int, path: Path) -> Path:
    """Accuracy and loss per epoch, train and val, with the fine-tuning start marked."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if history.get(key):
                ax.plot(epochs, history[key], style, marker="o", label=key.replace("_", " "))
        if 0 < fine_tune_start < len(epochs):
            ax.axvline(
                fine_tune_start + 0.5, color="gray", linestyle=":", label="start fine-tuning"
            )
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(plt, fig, path, dpi=100)


def confusion_matrices(matrices: Dict[str, np.ndarray], labels: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrices side by side (Keras, then each TFLite model)."""
    plt = _pyplot()
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4.2), squeeze=False)
    for ax, (title, matrix) in zip(axes[0], matrices.items()):
        rows = matrix.sum(axis=1, keepdims=True)
        normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
        ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(matrix[i, j])),
                        ha="center",
                        va="center",
                        color="white" if normalised[i, j] > 0.5 else "black",
                        fontsize=8,
                    )
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    return _save(plt, fig, path, dpi=100)


def per_class_change(changes: Dict[str, List], labels: Sequence[str], path: Path) -> Path:
    """Per-class top-1 change (points) of each TFLite model against Keras."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(labels) + 2), 3.6))
    width = 0.8 / max(1, len(changes))
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(changes.items()):
        heights = [0.0 if v is None else v for v in values]
        ax.bar(x + i * width, heights, width, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x + width * (len(changes) - 1) / 2, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("top-1 change vs Keras (points)")
    ax.legend(fontsize=8)
    return _save(plt, fig, path, dpi=100)


def image_grid(items: List[Dict], path: Path, columns: int = 4) -> Path:
    """Thumbnails of disagreeing images with the true label and both predictions."""
    from PIL import Image

    plt = _pyplot()
    rows = (len(items) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        try:
            with Image.open(item["path"]) as image:
                ax.imshow(image.convert("RGB"))
        except OSError:
            pass
        ax.set_title(
            f"true {item['true']}\nkeras {item['keras']} {item['keras_score']:.2f}\n"
            f"tflite {item['tflite']} {item['tflite_score']:.2f}",
            fontsize=8,
        )
    return _save(plt, fig, path, dpi=80)


def reliability_diagram(curves: Dict[str, List[Dict[str, float]]], path: Path) -> Path:
    """Accuracy against confidence per bin (``edge.metrics.reliability`` rows), one line
    per model or stage; the diagonal is a calibrated model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="calibrated")
    for name, rows in curves.items():
        if rows:
            ax.plot(
                [r["confidence"] for r in rows],
                [r["accuracy"] for r in rows],
                marker="o",
                label=name,
            )
    ax.set_xlabel("top score (confidence)")
    ax.set_ylabel("accuracy of photos in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    return _save(plt, fig, path)


def risk_coverage(curves: Dict[str, Sequence[Sequence[float]]], path: Path) -> Path:
    """Error rate of the answered photos against the share answered, as the floor
    drops; ``curves`` maps a name to ``(coverage, risk)`` pairs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        if len(points):
            points = np.asarray(points)
            ax.plot(points[:, 0], points[:, 1], label=name)
    ax.set_xlabel("coverage (share of known-class photos answered)")
    ax.set_ylabel("risk (share of answers that are wrong)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)
