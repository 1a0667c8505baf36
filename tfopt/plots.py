"""PNG plots, drawn with matplotlib's Agg backend (no display needed).

Imports no TensorFlow and nothing of tfopt: the training loop, the callbacks, the tuner and
the reports all draw with it.
"""

from __future__ import annotations


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend.

    matplotlib is imported on the first plot, not with this module: it costs a noticeable
    fraction of a second that commands which draw nothing need not pay.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict], path, title: str = "") -> None:
    """Loss, every metric and the learning rate against epoch, train and validation."""
    plt = pyplot()
    if not history:
        return
    keys = [k for k in history[0] if k != "epoch" and not k.startswith("val_") and "/" not in k]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    epochs = [r["epoch"] for r in history]
    for ax, key in zip(axes[0], keys):
        if key in ("lr", "learning_rate"):
            rate_panel(ax, epochs, [r.get(key) for r in history], key)
            continue
        ax.plot(epochs, [r.get(key) for r in history], marker="o", label="train")
        if f"val_{key}" in history[0]:
            ax.plot(epochs, [r.get(f"val_{key}") for r in history], marker="o", label="validation")
            ax.legend()
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


#: The rate panel shows at most this ratio between the highest rate and its bottom edge; a rate that
#: a schedule decays below it (often the last epoch's) is drawn on the edge and labelled with its value.
RATE_RANGE = 30.0


def rate_panel(ax, epochs, rates, title="lr") -> None:
    """The learning rate against epoch on a log scale that a last, near-zero rate does not squash."""
    shown = [r for r in rates if r is not None and r > 0]
    if not shown:
        return
    floor = max(min(shown), max(shown) / RATE_RANGE)
    if len(shown) < len(rates):  # a zero rate sits below the lowest positive one
        floor = min(floor, min(shown) / 2)
    clipped = [max(r, floor) if r is not None and r > 0 else floor for r in rates]
    ax.plot(epochs, clipped, marker="o")
    ax.set_yscale("log")
    ax.set_ylim(floor / 1.3, max(shown) * 1.3)
    for e, r in zip(epochs, rates):
        if r is None or r < floor:
            ax.plot([e], [floor], marker="v", color="tab:red", ls="")
            ax.annotate(f"{r:.1e}" if r else "0", (e, floor), textcoords="offset points", xytext=(0, 6),
                        ha="right" if e == epochs[-1] else "center", fontsize=7, color="tab:red")
    ax.set_xlabel("epoch")
    ax.set_title(title + (" (lower rates on the edge)" if min(shown) < floor or len(shown) < len(rates) else ""))
    ax.grid(alpha=0.3)


def line_plot(x, series: dict, path, xlabel="", ylabel="", title="", logy=False, logx=False, mark=None) -> None:
    """One line per series; ``mark=(x, label)`` draws a vertical marker."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ys in series.items():
        ax.plot(x, ys, label=name, lw=2 if name.startswith("(") else 1)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    if mark is not None:
        ax.axvline(mark[0], color="red", ls="--", label=mark[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) <= 20:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def removal_plot(rows: list[dict], path) -> None:
    """Accuracy drop against MACs saved, one point per removable layer or block."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        ax.scatter(r["macs_saved"], r["drop_points"])
        ax.annotate(r["candidate"], (r["macs_saved"], r["drop_points"]), fontsize=8)
    ax.set_xlabel("MACs saved per image")
    ax.set_ylabel("accuracy drop (points, before fine-tuning)")
    ax.set_title("Layer and block removal")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def trials_plot(trials: list, scores: list, best_so_far: list, path, ylabel="score", title="", groups=None) -> None:
    """Each trial's score as a point (one colour per group, e.g. Hyperband budget), the best so far as a step line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    groups = groups or ["trial"] * len(trials)
    for group in dict.fromkeys(groups):
        picked = [(t, s) for t, s, g in zip(trials, scores, groups) if g == group]
        ax.plot([t for t, _ in picked], [s for _, s in picked], "o", ms=4, label=group)
    ax.step(trials, best_so_far, where="post", lw=2, label="best so far")
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
