"""Evaluation figures and the report: accuracy, per-class precision/recall/F1, confusion."""
from __future__ import annotations

from pathlib import Path

import torch


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """Rows are true labels, columns predictions."""
    return torch.bincount(labels * classes + pred, minlength=classes * classes).view(classes, classes)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Mean gap between confidence and accuracy over equal-width confidence bins."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.float().mean().item() * abs(conf[inside].mean().item() - correct[inside].mean().item())
    return ece


def calibrated_ece(probs: torch.Tensor, rounds: int = 200, seed: int = 0, bins: int = 15) -> float:
    """The ECE a perfectly calibrated model with these confidences shows on a set of this size:
    the median over ``rounds`` draws in which each answer is right with probability its
    confidence. ECE is biased upwards on small sets, so a measured ECE near this figure is
    sampling noise, not miscalibration."""
    conf, pred = probs.max(1)
    gen = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(rounds):
        right = torch.rand(len(conf), generator=gen) < conf
        draws.append(expected_calibration_error(probs, torch.where(right, pred, (pred + 1) % probs.shape[1]), bins))
    return float(torch.tensor(draws).median())


def evaluate(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """Figures for a set of calibrated scores (N, 10) against true labels (N,)."""
    pred = scores.argmax(1)
    cm = confusion_matrix(pred, labels).double()
    tp = cm.diag()
    precision = tp / cm.sum(0).clamp(min=1)
    recall = tp / cm.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    probs = scores.softmax(1)
    return {
        "accuracy": (pred == labels).float().mean().item(),
        "count": len(labels),
        "errors": int((pred != labels).sum()),
        "ece": expected_calibration_error(probs, labels),
        "per_class": [
            {"digit": d, "precision": precision[d].item(), "recall": recall[d].item(), "f1": f1[d].item(),
             "support": int(cm[d].sum())}
            for d in range(cm.shape[0])
        ],
        "confusion": cm.long().tolist(),
    }


def plot_confusion(confusion: list[list[int]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.array(confusion)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    shown = np.log1p(cm)
    im = ax.imshow(shown, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if shown[i, j] > shown.max() * 0.6 else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(metrics: dict, history: list[dict], out: Path) -> None:
    """report.md and confusion.png in ``out``."""
    plot_confusion(metrics["confusion"], out / "confusion.png",
                   f"MNIST test: {metrics['accuracy']:.2%} of {metrics['count']:,}")
    lines = [
        f"# Training report: digits {metrics['version']}",
        "",
        f"- Test accuracy: **{metrics['accuracy']:.2%}** ({metrics['errors']} errors in {metrics['count']:,} MNIST test images)",
        f"- The same images as the service sees them (each put through `model.preprocess`): "
        f"**{metrics['served_accuracy']:.2%}** ({metrics['served_errors']} errors), ECE {metrics['served_ece']:.2%}",
        f"- Expected calibration error: {metrics['ece']:.2%} (temperature {metrics['temperature']})",
        f"- Parameters: {metrics['parameters']:,}; epochs: {metrics['epochs']}; seed: {metrics['seed']}; "
        f"{metrics['served_mix']:.0%} of training images as served; weights: moving average (decay {metrics['ema']})",
        f"- Training time: {metrics['train_seconds']:.0f} s ({metrics['train_seconds'] / 60:.0f} min) on "
        f"{metrics['machine']}, {metrics['precision']} (torch {metrics['torch']})",
        "",
        "| digit | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {c['digit']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
              for c in metrics["per_class"]]
    lines += ["", "![confusion matrix](confusion.png)", "",
              f"Validation accuracy is the exported (averaged) weights' on the {metrics.get('val_images', 5000):,} "
              "held-out MNIST training images" + (" (a tenth of MNIST's writers, by QMNIST's writer ids)"
                                                  if metrics.get("sources") else "") + ".", "",
              "| epoch | loss | train acc | val acc | val acc as served |", "|---|---|---|---|---|"]
    lines += [f"| {h['epoch']} | {h['loss']:.4f} | {h['train_acc']:.4f} | {h['val_acc']:.4f} | "
              f"{h.get('val_served_acc', float('nan')):.4f} |" for h in history]
    (out / "report.md").write_text("\n".join(lines) + "\n")
