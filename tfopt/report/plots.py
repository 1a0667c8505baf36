"""PNG plots, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict], path, title: str = "") -> None:
    """Loss, every metric and the learning rate against epoch, train and validation."""
    plt = _pyplot()
    if not history:
        return
    keys = [k for k in history[0] if k != "epoch" and not k.startswith("val_")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    epochs = [r["epoch"] for r in history]
    for ax, key in zip(axes[0], keys):
        ax.plot(epochs, [r.get(key) for r in history], marker="o", label="train")
        if f"val_{key}" in history[0]:
            ax.plot(epochs, [r.get(f"val_{key}") for r in history], marker="o", label="validation")
            ax.legend()
        ax.set_xlabel("epoch")
        ax.set_title(key)
        if key == "lr":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
