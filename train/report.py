"""The search report: ``report.md``, PNG plots and ``results.json`` from collected results.

``write_report(results, out)`` is a pure function of the ``results`` dict that
``rnnserve.train.search.collect.collect`` builds (plus the files it writes). Its shape::

    settings, run, data                     what was searched, on what, how long it took
    cells.<cell>.counts                     {"complete", "pruned", "failed"}
    cells.<cell>.best                       best completed trial: params, val/test quality,
                                            size, time per epoch / to best, memory, curve,
                                            exported (engine + quality), latency
    cells.<cell>.trials[]                   every finished trial (for the plots and tables)
    equal_size[]                            both cells trained at identical sizes (measured)
    matched_pairs[]                         search trials of both cells with identical sizes
    significance                            McNemar test of the two best models on validation

Invariants
----------
* Every sentence of the conclusion and every claim verdict is computed from those numbers
  (``rnnserve.train.search.verdicts``: ``conclude``, ``judge_claims``); nothing in the
  report is written by hand, and the thresholds used for "similar" are stated next to each
  verdict.
* Every plot axis is labelled with its quantity and unit, and every latency plot names the
  inference engine that produced its numbers.
* Each latency figure carries the engine that produced it (``onnxruntime`` for exported
  models, ``torch-eager`` when no export was available).
* ``results.json`` is the input plus ``claims`` and ``conclusion``, so the report can be
  regenerated from it alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rnnserve.train.search.verdicts import (
    best_cells,
    conclude,
    judge_claims,
    mib,
    ms,
    name,
    pct,
    pretrain_epochs,
    seconds,
)

REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"
PLOTS = {
    "accuracy_vs_parameters": "accuracy_vs_parameters.png",
    "validation_curves": "validation_curves.png",
    "latency_vs_accuracy": "latency_vs_accuracy.png",
}
COLORS = {"lstm": "tab:blue", "gru": "tab:orange"}


# --------------------------------------------------------------------------- markdown


def _best_table(results: dict) -> list[str]:
    best = best_cells(results)
    cells = list(best)
    if not cells:
        return ["No completed trial."]

    def row(label: str, fn) -> str:
        return f"| {label} | " + " | ".join(fn(best[c], results["cells"][c]) for c in cells) + " |"

    def params_field(key, fmt=str):
        return lambda b, _: fmt(b["params"][key])

    test = any(b.get("test") for b in best.values())
    lines = ["| | " + " | ".join(name(c) for c in cells) + " |",
             "|---|" + "---|" * len(cells),
             row("best trial", lambda b, _: f"#{b['trial']}"),
             row("trials completed / pruned / failed",
                 lambda _, d: f"{d['counts']['complete']} / {d['counts']['pruned']} / "
                              f"{d['counts']['failed']}"),
             row("validation accuracy (trainer, torch)", lambda b, _: pct(b["val_accuracy"], 2)),
             row("validation macro-F1 (trainer)", lambda b, _: f"{b['val_macro_f1']:.4f}"),
             row("validation accuracy / macro-F1 (measured model)",
                 lambda b, _: f"{pct(b['exported']['val_accuracy'], 2)} / "
                              f"{b['exported']['val_macro_f1']:.4f}" if b.get("exported") else "n/a"),
             row("validation loss at best epoch (nats)",
                 lambda b, _: "n/a" if b.get("val_loss") is None else f"{b['val_loss']:.4f}")]
    if test:
        lines.append(row("test accuracy / macro-F1",
                         lambda b, _: f"{pct(b['test']['accuracy'], 2)} / {b['test']['macro_f1']:.4f}"
                         if b.get("test") else "n/a"))
    lines += [
        row("parameters (total)", lambda b, _: f"{b['parameters']:,}"),
        row("parameters: embedding / recurrent / head",
            lambda b, _: " / ".join(f"{b['parameter_breakdown'][k]:,}"
                                    for k in ("embedding", "recurrent", "head"))),
        row("embed dim / hidden / layers", lambda b, _: f"{b['params']['embed_dim']} / "
            f"{b['params']['hidden']} / {b['params']['layers']}"),
        row("dropout", params_field("dropout", lambda v: f"{v:.2f}")),
        row("learning rate", params_field("lr", lambda v: f"{v:.2e}")),
        row("weight decay", params_field("weight_decay", lambda v: f"{v:.1e}")),
        row("batch size", params_field("batch_size")),
        row("best epoch / epochs run", lambda b, _: f"{b['best_epoch']} / {b['epochs_run']}"),
        row("training time per epoch (wall / CPU, incl. validation)"
            + (" (CPU: the trial's, LM pretraining included, per epoch run)"
               if pretrain_epochs(results) else ""),
            lambda b, _: f"{seconds(b['seconds_per_epoch'])} / "
                         f"{seconds(b.get('cpu_seconds_per_epoch'))}"),
        row("training time to best epoch", lambda b, _: seconds(b["seconds_to_best"])),
        row("training memory, fresh process: model + optimizer + longest batches (peak RSS)",
            _fresh_memory),
        row("peak RSS of the search process during the trial", _memory),
        row("latency, batch 1, median / p90",
            lambda b, _: f"{ms(b['latency']['batch1_median_ms'])} / {ms(b['latency']['batch1_p90_ms'])}"
            if b.get("latency") else "n/a"),
        row("throughput, batch 32 (texts/s)",
            lambda b, _: f"{b['latency']['throughput_per_s']:.0f}" if b.get("latency") else "n/a"),
        row("inference engine", lambda b, _: b["latency"]["engine"] if b.get("latency") else "n/a"),
    ]
    return lines


def _memory(best: dict, _cell: dict) -> str:
    peak = best.get("peak_memory_bytes")
    if peak is None:
        return "n/a"
    scope = "" if "cumulative" not in (best.get("peak_memory_source") or "") else " (cumulative)"
    return f"{mib(peak)}{scope}"


def _fresh_memory(best: dict, _cell: dict) -> str:
    memory = best.get("training_memory")
    if not memory:
        return "n/a"
    return f"{mib(memory['training_bytes'])} ({mib(memory['peak_bytes'])})"


def _claims_section(claims: dict, results: dict) -> list[str]:
    lines = ["## Common claims, checked on this data", ""]
    p = claims["quarter_fewer_parameters"]
    lines += ["### \"A GRU has about a quarter fewer parameters than an LSTM of the same size\"", "",
              "Exact counts (`rnnserve.train.search.sizes`, equal to torch's `numel` sum):", ""]
    if p["rows"]:
        lines += ["| sizes (embed / hidden / layers, vocab) | LSTM | GRU | recurrent fewer | total fewer |",
                  "|---|---|---|---|---|"]
        vocab = results["settings"]["space"]["vocab_size"]
        for r in p["rows"]:
            s = r["sizes"]
            lines.append(f"| {s['embed_dim']} / {s['hidden']} / {s['layers']}, {vocab} ({r['from']}) "
                         f"| {r['lstm']:,} | {r['gru']:,} | {pct(r['recurrent_fewer'])} "
                         f"| {pct(r['total_fewer'])} |")
    lines += ["", p["summary"], ""]
    s = claims["faster_per_epoch"]
    lines += ["### \"A GRU trains faster per epoch\"", "",
              ("Measured at equal sizes: both cells trained on the same length-bucketed batches "
               "of the training data, each batch three times, the cells taking turns; a batch's "
               "time is its fastest repeat (seconds per epoch = mean batch time x batches per "
               "epoch, no validation). Below them: pairs of search trials that happened to have "
               "identical sizes (full epochs including validation). The comparison uses the "
               "process's CPU time, which other processes on a shared machine do not inflate; "
               "wall time is shown for reference."), ""]
    if s["rows"]:
        lines += [("| source | embed / hidden / layers / batch | LSTM CPU s/epoch | GRU CPU s/epoch "
                  "| GRU faster by | LSTM / GRU wall s/epoch |"), "|---|---|---|---|---|---|"]
        for r in s["rows"]:
            z = r["sizes"]
            basis = "" if r["basis"] == "cpu" else " (wall)"
            lines.append(f"| {r['source']} | {z['embed_dim']} / {z['hidden']} / {z['layers']} / "
                         f"{z['batch_size']} | {r['lstm']:.1f}{basis} | {r['gru']:.1f}{basis} | "
                         f"{pct(r['gru_faster'])} | {r['lstm_wall']:.1f} / {r['gru_wall']:.1f} |")
    lines += ["", s["summary"], ""]
    loss = claims["similar_or_lower_loss"]
    lines += ["### \"A GRU reaches a similar or lower loss\"", ""]
    if loss["rows"]:
        lines += ["| source | LSTM (nats) | GRU (nats) | GRU lower by |", "|---|---|---|---|"]
        for r in loss["rows"]:
            lines.append(f"| {r['source']} | {r['lstm']:.4f} | {r['gru']:.4f} | {pct(r['gru_lower'])} |")
    lines += ["", loss["summary"], ""]
    return lines


def _recipe(space: dict) -> str:
    """The fixed training extras every trial shared (absent from reports made before them)."""
    if "adversarial_eps" not in space:
        return ""
    eps = space["adversarial_eps"]
    adversarial = f"adversarial training ε = {eps:g}" if eps else "no adversarial training"
    return (f"; every trial: {space['lm_pretrain_epochs']} epoch(s) of language-model "
            f"pretraining, {adversarial}")


def _history(run: dict) -> str:
    history = run.get("history") or []
    if not history:
        return "not recorded"
    total = sum(entry["trial_phase_seconds"] for entry in history)
    parts = [f"{seconds(e['trial_phase_seconds'])} ({sum(e['ran'].values())} trials, "
             f"{e['outcome']}, load average {e['load_average_start']:.1f}-"
             f"{e['load_average_end']:.1f})" for e in history]
    return (f"{seconds(total)} in the trial phases of {len(history)} invocation(s): "
            + "; ".join(parts))


def _one_decimal(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _trials_table(results: dict) -> list[str]:
    lines = ["## All trials", "",
             ("| cell | trial | state | epochs | val acc | parameters | embed | hidden | layers | "
             "dropout | lr | batch | s/epoch |"), "|---" * 13 + "|"]
    for cell, data in results["cells"].items():
        for t in data["trials"]:
            p = t["params"]
            lines.append(
                f"| {name(cell)} | {t['number']} | {t['state'].lower()} | {t['epochs_run']} | "
                f"{pct(t['val_accuracy'])} | {t['parameters']:,} | {p['embed_dim']} | {p['hidden']} | "
                f"{p['layers']} | {p['dropout']:.2f} | {p['lr']:.1e} | {p['batch_size']} | "
                f"{_one_decimal(t['seconds_per_epoch'])} |")
    return lines


def render_markdown(results: dict) -> str:
    settings, run, data = results["settings"], results["run"], results["data"]
    space = settings["space"]
    label = results.get("label")
    lines = ["# LSTM vs GRU: hyperparameter search report", ""]
    if label:
        lines += [f"> {label}", ""]
    lines += [
        (f"Generated by `rnnserve search` at {run['finished_at']}. Every number and sentence "
        f"below is computed from `results.json`; nothing is written by hand."), "",
        "```", results.get("command") or "(command not recorded)", "```", "",
        (f"- Code: git `{(results.get('code') or {}).get('git') or 'n/a'}`, training code digest "
        f"`{(results.get('code') or {}).get('training_code_sha256') or 'n/a'}` (sha256 of "
        f"trainer, config, model, batching, tokenizer, schedule and pretrain sources)."),
        f"- Data: training `{settings['data']}` ({data['train_examples']:,} examples), "
        f"validation {data['val_source']} ({data['val_examples']:,} examples)"
        + (f", test `{data['test_source']}` ({data['test_examples']:,} examples)"
           if data.get("test_examples") else ", no test file") + ".",
        (f"- Budget per cell: {settings['trials']} finished trials (completed + pruned), up to "
        f"{settings['epochs']} epoch(s) each; search space `{space['name']}`: "
        f"embed {space['embed_dim']}, hidden {space['hidden']}, layers {space['layers']}, "
        f"dropout {space['dropout']}, lr {space['lr']} (log), weight decay "
        f"{space['weight_decay']} (log), batch {space['batch_size']}; vocabulary "
        f"{space['vocab_size']:,} (one tokenizer for all trials)" + _recipe(space) + "."),
        (f"- Optuna: {settings['sampler']}; {settings['pruner']}; one SQLite study per cell "
        f"(`study.db`), cells interleaved trial by trial."),
        f"- Search wall time: {_history(run)}.",
        f"- Run: {seconds(run['wall_seconds'])} wall time for this invocation "
        f"({', '.join(f'{name(c)} {n}' for c, n in run['ran'].items())} trials run now), "
        f"{seconds(run['trial_seconds_total'])} of training wall time in all stored trials, "
        f"{seconds(run.get('trial_cpu_seconds_total'))} of CPU time (the whole command used "
        f"{seconds(run.get('process_cpu_seconds'))} of CPU time up to the report)"
        + (" — stopped by --timeout" if run.get("timed_out") else "") + f". Machine: "
        f"{run['cpu_count']} CPU cores, {run.get('training_threads', '?')} training thread(s), "
        f"load average {run['load_average_start']:.1f} at start and "
        f"{run['load_average_end']:.1f} at the end. With one training thread the CPU time is "
        f"about the wall time the trials would take on an otherwise idle machine; where the load "
        f"average exceeds the core count other processes shared the CPU, so absolute times are "
        f"upper bounds (LSTM/GRU comparisons were measured side by side).",
        "", "## Conclusion", ""]
    lines += [f"- {sentence}" for sentence in results["conclusion"]]
    lines += ["", "## Best trial per cell", ""] + _best_table(results)
    lines += ["", ("Validation accuracy (trainer) is the search objective, measured by the trainer "
              "at the best epoch; \"measured model\" re-scores the saved best checkpoint with the "
              "engine named in the last row. Latency: single texts from the validation file in "
              "file order; throughput: consecutive batches of 32 of them; one intra-op thread."), ""]
    lines += _claims_section(results["claims"], results)
    lines += ["## Plots", "",
              f"![accuracy vs parameters]({PLOTS['accuracy_vs_parameters']})", "",
              f"![validation curves]({PLOTS['validation_curves']})", "",
              f"![latency vs accuracy]({PLOTS['latency_vs_accuracy']})", ""]
    lines += _trials_table(results) + [""]
    return "\n".join(lines)


def write_report(results: dict, out: Path | str) -> Path:
    """Add ``claims`` and ``conclusion`` to ``results``; write plots, results.json, report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results["claims"] = judge_claims(results)
    results["conclusion"] = conclude(results)
    results["plots"] = write_plots(results, out)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    path = out / REPORT_FILE
    path.write_text(render_markdown(results))
    return path


def rewrite_report(results_file: Path | str, out: Path | str, *, label: str | None = None) -> Path:
    """Re-render a report (plots, results.json, report.md) into ``out`` from a results.json,
    optionally with a provenance ``label`` shown under the title (e.g. for docs/ copies)."""
    results = json.loads(Path(results_file).read_text())
    if label is not None:
        results["label"] = label
    return write_report(results, out)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- plots


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
