"""Plots and overlays of a training run, from WORKDIR/metrics.jsonl and an evaluation.

    plot_metrics(workdir) -> [paths]      WORKDIR/plots/rewards.png (reward components per step,
                                          smoothed) and WORKDIR/plots/heldout_giou.png (eval/giou)
    write_overlays(workdir, evaluator, examples, params, n) -> [paths]
                                          WORKDIR/plots/overlay_<id>.png: a held-out image with
                                          the policy's mask tinted, its box and points drawn
"""

from __future__ import annotations

import json
import os

import numpy as np

REWARD_KEYS = ("reward/thinking_format", "reward/segmentation_format", "reward/bbox_iou", "reward/bbox_l1",
               "reward/points_l1", "reward/total")


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                row = json.loads(line)
                rows.setdefault(row["step"], {}).update(row)   # a resumed run may repeat a step
    return [rows[k] for k in sorted(rows)]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window <= 1:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_metrics(workdir: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(workdir)
    out_dir = os.path.join(workdir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    train = [r for r in rows if "reward/total" in r]
    if train:
        steps = np.array([r["step"] for r in train])
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        window = max(1, len(train) // 20)
        for key in REWARD_KEYS[:-1]:
            axes[0].plot(steps, _smooth(np.array([r[key] for r in train]), window), label=key.split("/")[1])
        axes[0].set(title="reward components (batch mean)", xlabel="step", ylim=(-0.05, 1.05))
        axes[0].legend(fontsize=8)
        axes[1].plot(steps, _smooth(np.array([r["reward/total"] for r in train]), window), color="k")
        axes[1].set(title="total reward (0-5)", xlabel="step")
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "rewards.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    held = [r for r in rows if "eval/giou" in r]
    if held:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.plot([r["step"] for r in held], [r["eval/giou"] for r in held], "o-", label="gIoU")
        ax.plot([r["step"] for r in held], [r["eval/ciou"] for r in held], "s--", label="cIoU")
        ax.set(title="held-out (validation) IoU", xlabel="step")
        ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "heldout_giou.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def write_overlays(workdir: str, pipeline, examples, n: int = 4) -> list[str]:
    """Overlays of the first `n` examples' predictions (a `inference.SegZeroPipeline`)."""
    from segzero_jax.inference import render_overlay
    out_dir = os.path.join(workdir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i in range(min(n, len(examples))):
        ex = examples[i]
        pred = pipeline(ex.image, ex.question)
        image = render_overlay(ex.image, pred.mask, pred.bbox, pred.points)
        path = os.path.join(out_dir, f"overlay_{ex.id}.png")
        image.save(path)
        with open(path[:-4] + ".txt", "w") as f:
            f.write(f"question: {ex.question}\nresponse: {pred.response}\n")
        paths.append(path)
    return paths
