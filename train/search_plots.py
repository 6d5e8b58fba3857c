"""The three PNG plots of the search report (matplotlib, Agg backend).

Invariant: every axis is labelled with its quantity and unit, and every latency plot names
the inference engine that produced its numbers.
"""

from __future__ import annotations

from pathlib import Path

from rnnserve.train.search_format import name

PLOTS = {
    "accuracy_vs_parameters": "accuracy_vs_parameters.png",
    "validation_curves": "validation_curves.png",
    "latency_vs_accuracy": "latency_vs_accuracy.png",
}
COLORS = {"lstm": "tab:blue", "gru": "tab:orange"}


def write_plots(results: dict, out: Path) -> dict[str, str]:
    """The three PNGs; returns plot key -> file name (relative to ``out``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    for key, draw in (("accuracy_vs_parameters", _plot_accuracy_vs_parameters),
                      ("validation_curves", _plot_curves),
                      ("latency_vs_accuracy", _plot_latency)):
        figure = draw(plt, results)
        figure.tight_layout()
        figure.savefig(out / PLOTS[key], dpi=110)
        plt.close(figure)
        written[key] = PLOTS[key]
    return written


def _plot_accuracy_vs_parameters(plt, results: dict):
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for cell, data in results["cells"].items():
        for state, marker, fill in (("COMPLETE", "o", True), ("PRUNED", "x", False)):
            points = [t for t in data["trials"] if t["state"] == state and t["val_accuracy"] is not None]
            if points:
                axis.scatter([t["parameters"] for t in points],
                             [100 * t["val_accuracy"] for t in points], marker=marker,
                             color=COLORS[cell], alpha=0.8 if fill else 0.6,
                             label=f"{name(cell)} {state.lower()} ({len(points)})")
        if data.get("best"):
            axis.scatter([data["best"]["parameters"]], [100 * data["best"]["val_accuracy"]],
                         marker="*", s=260, color=COLORS[cell], edgecolors="black",
                         label=f"{name(cell)} best (trial {data['best']['trial']})", zorder=5)
    axis.set_xscale("log")
    axis.set_xlabel("parameters (count, log scale)")
    axis.set_ylabel("validation accuracy (%)")
    axis.set_title("Every trial: validation accuracy vs size\n(pruned: best accuracy before pruning)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    return figure


def _plot_curves(plt, results: dict):
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for cell, data in results["cells"].items():
        best = data.get("best")
        if not best:
            continue
        epochs = [point["epoch"] for point in best["curve"]]
        left.plot(epochs, [100 * point["val_accuracy"] for point in best["curve"]], marker="o",
                  color=COLORS[cell], label=f"{name(cell)} trial {best['trial']}")
        losses = [point.get("val_loss") for point in best["curve"]]
        if all(loss is not None for loss in losses):
            right.plot(epochs, losses, marker="o", color=COLORS[cell],
                       label=f"{name(cell)} validation")
        train_losses = [point.get("train_loss") for point in best["curve"]]
        if all(loss is not None for loss in train_losses):
            right.plot(epochs, train_losses, marker=".", linestyle="--", color=COLORS[cell],
                       label=f"{name(cell)} training")
    left.set_xlabel("epoch")
    left.set_ylabel("validation accuracy (%)")
    left.set_title("Best trial per cell: validation accuracy")
    right.set_xlabel("epoch")
    right.set_ylabel("cross-entropy loss (nats per example)")
    right.set_title("Best trial per cell: loss")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
        axis.xaxis.get_major_locator().set_params(integer=True)
    return figure


def _plot_latency(plt, results: dict):
    figure, axis = plt.subplots(figsize=(7, 4.5))
    engines = set()
    for cell, data in results["cells"].items():
        points = [t for t in data["trials"] if t.get("latency")]
        if points:
            engines.update(t["latency"]["engine"].split(" (")[0] for t in points)
            axis.scatter([t["latency"]["batch1_median_ms"] for t in points],
                         [100 * t["val_accuracy"] for t in points], color=COLORS[cell],
                         label=f"{name(cell)} top trials ({len(points)})")
        best = data.get("best")
        if best and best.get("latency"):
            axis.scatter([best["latency"]["batch1_median_ms"]], [100 * best["val_accuracy"]],
                         marker="*", s=260, color=COLORS[cell], edgecolors="black", zorder=5,
                         label=f"{name(cell)} best (trial {best['trial']})")
    axis.set_xlabel("median latency at batch 1 (ms per text)")
    axis.set_ylabel("validation accuracy (%)")
    axis.set_title(f"Latency vs accuracy (engine: {', '.join(sorted(engines)) or 'n/a'})")
    axis.grid(True, alpha=0.3)
    if engines:
        axis.legend(fontsize=8)
    return figure
