"""Figures: the paper's Figure 1 (non-convex function with solver paths) and
Figure 2 (validation error per epoch, with L on a second axis)."""

import numpy as np

from keras_hta.experiments import write_atomic


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures written to files, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_nonconvex(path, starts=((5.0, 4.0), (0.0, 5.0), (4.0, 0.0)), schedule=None, anchor="zeros", extent=10.0):
    """Draws eq. (33) for n = 2 with the paths of BFGS and the homotopy method.

    Args:
        path: String, the PNG file to write.
        starts: Starting points (x₁, x₂).
        schedule, anchor: For the homotopy method, as in
            `keras_hta.experiments.nonconvex.solve_homotopy`.
        extent: Float, the plot covers [-extent, extent]².

    Returns:
        `path`.
    """
    from keras_hta.experiments import nonconvex

    plt = pyplot()
    grid = np.linspace(-extent, extent, 401)
    xx, yy = np.meshgrid(grid, grid)
    zz = nonconvex.function(np.stack([xx, yy], -1))
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    cs = ax.contourf(xx, yy, zz, levels=40, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="f(x)")
    for i, start in enumerate(starts):
        for method, style in (("bfgs", "r.-"), ("homotopy", "w.-")):
            points = []
            if method == "bfgs":
                nonconvex.solve_bfgs(np.array(start), path=points)
            else:
                nonconvex.solve_homotopy(np.array(start), schedule, anchor, path=points)
            points = np.array(points)
            label = None if i else ("quasi-Newton" if method == "bfgs" else f"homotopy (anchor={anchor})")
            ax.plot(points[:, 0], points[:, 1], style, ms=3, lw=1, label=label)
        ax.plot(*start, "ko", ms=5)
    ax.plot(1, 1, "y*", ms=14, label="global minimum (1, 1)")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    ax.set_title("Eq. (33), n = 2, k = 10, A = 1")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, dpi=120, format="png"), mode="wb")
    plt.close(fig)
    return path


def plot_error_curves(path, curves, l_values=None, title="Validation error"):
    """Validation error (%) per epoch for several runs, L on a second axis.

    Args:
        path: String, the PNG file to write.
        curves: Dict `label -> list of per-seed lists of error (%) per epoch`;
            the mean is drawn, with the seeds' range shaded.
        l_values: List of L per epoch, or `None`.
        title: String.

    Returns:
        `path`.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in curves.items():
        runs = np.asarray(runs, float)
        epochs = np.arange(1, runs.shape[1] + 1)
        ax.plot(epochs, runs.mean(0), marker="o" if len(epochs) < 30 else None, ms=4, label=label)
        if len(runs) > 1:
            ax.fill_between(epochs, runs.min(0), runs.max(0), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation error (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if l_values is not None:
        ax2 = ax.twinx()
        ax2.step(np.arange(1, len(l_values) + 1), l_values, "k--", where="mid", alpha=0.5, label="L (HTA)")
        ax2.set_ylabel("L")
        ax2.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, dpi=120, format="png"), mode="wb")
    plt.close(fig)
    return path
