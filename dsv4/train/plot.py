"""Loss curves as a PNG (matplotlib, imported only when a plot is drawn)."""
from collections.abc import Mapping, Sequence
from pathlib import Path


class PlotError(RuntimeError):
    """matplotlib is missing, or there is nothing to plot."""


def plot_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
                xlabel: str, ylabel: str = "loss", title: str = "") -> Path:
    """One line per label: curves[label] = (xs, ys). Writes a PNG at path and returns it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("drawing loss curves needs matplotlib: python -m pip install matplotlib") from None
    if not any(len(xs) for xs, _ in curves.values()):
        raise PlotError(f"no points to plot in {sorted(curves)}")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=label, linewidth=1.4)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
