"""The stability plot: relative fp32 divergence against position, one line per layer, one panel per model."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on workers
import matplotlib.pyplot as plt

from worker.evaluation.stability.report import StabilityReport


def plot_divergence(reports: dict[str, StabilityReport], path: Path) -> Path:
    """Write a PNG with one panel per named report (e.g. base and fine_tuned) and return its path."""
    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4), squeeze=False, sharey=True)
    for ax, (name, report) in zip(axes[0], reports.items(), strict=True):
        for layer in report.divergence:
            label = f"layer {layer.layer} {'+'.join(layer.kinds)} (slope {layer.slope:+.3f})"
            ax.plot(layer.per_position, label=label, linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("position")
        ax.set_title(f"{name}: {report.precision} vs fp32, max λ = {report.max_lyapunov_exponent:.3g}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("relative divergence ||h_lp - h_fp32|| / ||h_fp32||")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path
