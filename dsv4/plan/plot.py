"""The speed chart: bandwidth-bound decode tokens/s against recipe, one line per device (PNG, matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path


def plot_speeds(recipes: list[str], grid: dict[str, list[float | None]], title: str, path: str | Path) -> Path:
    """One line per device of `grid` (label -> tokens/s per recipe, None: cannot run) over `recipes`; PNG at path."""
    import matplotlib
    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 6))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # 20 distinct colours: one per catalog device
    for label, speeds in grid.items():
        ax.plot(recipes, [float("nan") if s is None else s for s in speeds], marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("recipe (smallest first)")
    ax.set_ylabel("decode tokens/s (bandwidth bound: an upper limit)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
