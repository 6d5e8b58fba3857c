"""results.json -> markdown report and PNG plots.

Files written to the output directory: ``results.json``, ``report.md``,
``bench_throughput.png`` (throughput vs concurrency per system, raw limit dashed),
``bench_latency.png`` (p50/p99 vs concurrency), ``bench_chunk_latency.png`` (chunk latency vs
stream position), ``bench_streams.png`` (chunks/s and memory vs open streams) and
``bench_raw_sweep.png`` (raw ORT throughput vs batch size).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

from rnnserve.bench import targets as tg

PLOTS = ("bench_throughput.png", "bench_latency.png", "bench_chunk_latency.png",
         "bench_streams.png", "bench_raw_sweep.png")


def emit_json(result, path: Path | None) -> None:
    """A measuring tool's result as indented JSON: into ``path``, or on stdout."""
    text = json.dumps(result, indent=1)
    if path:
        path.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")


def _f(value, digits: int = 0, unit: str = "") -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    return f"{value:,.{digits}f}{unit}"


def _series_name(entry: dict) -> str:
    name = entry["system"]
    if name.startswith("rnnserve"):
        name += f" {entry['api']}"
    return f"{name} ({'PA' if entry['driver'] == 'perf_analyzer' else 'loadgen'})"


def _panels(results: dict) -> list[tuple[str, str]]:
    """(placement, model) pairs with unary data, in run order."""
    seen: list[tuple[str, str]] = []
    for entry in results.get("unary", []):
        key = (entry["placement"], entry["model"])
        if key not in seen:
            seen.append(key)
    return seen


# -- markdown --------------------------------------------------------------------------------
def machine_section(results: dict) -> list[str]:
    m = results.get("machine", {})
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    load = ", ".join(f"{x:.2f}" for x in m.get("load_average", []))
    return [
        (f"- CPU: {m.get('cpu_model')} — {m.get('logical_cores')} logical cores "
        f"({m.get('usable_cores')} usable), {m.get('memory_gib')} GiB RAM, GPU: "
        f"{m.get('gpu') or 'none'}"),
        f"- OS: {m.get('os')}, Python {m.get('python')}; {versions}",
        (f"- Load average at start: {load} (other work on the machine makes absolute numbers "
        "noisy; compare ratios within one run)"),
        (f"- Data: {results.get('data_source')} ({results.get('sentences')} sentences); "
        f"suite `{results.get('suite')}`, {_f(results.get('duration_s'), 0, ' s')} in all; "
        f"ORT intra-op threads {results.get('options', {}).get('threads')}; run priority: "
        f"nice {results.get('options', {}).get('nice') or 0}"),
    ]


def raw_table(results: dict) -> list[str]:
    lines = [("| placement | model | precision | threads | best batch | sentences/s | tokens/s "
             "| tokenize+ORT sentences/s | batch-1 p50 ORT | batch-1 p50 tokenize+ORT |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.get("raw_limit", []):
        lines.append(
            f"| {r['placement']} | {r['model']} | {r['precision']} | {r['threads']} | "
            f"{r['best_batch']} | {_f(r['sentences_per_s'])} | {_f(r['tokens_per_s'])} | "
            f"{_f(r['pipeline_sentences_per_s'])} | {_f(r['batch1_p50_ms'], 3, ' ms')} | "
            f"{_f(r['batch1_pipeline_p50_ms'], 3, ' ms')} |")
    return lines


def unary_tables(results: dict) -> list[str]:
    out = []
    for placement, model in _panels(results):
        raw = tg.find_raw(results, placement=placement, model=model)
        limit = raw["sentences_per_s"] if raw else math.nan
        out += [f"#### {model} — {placement}", "",
                ("| system | c | req/s | tokens/s | p50 ms | p95 ms | p99 ms | % of raw limit "
                "| client µs/req | server µs/req | errors |"),
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for entry in results["unary"]:
            if (entry["placement"], entry["model"]) != (placement, model):
                continue
            for lv in entry["levels"]:
                share = lv["throughput_rps"] / limit if limit and math.isfinite(limit) else None
                flag = " (unstable)" if lv.get("stable") is False else ""
                out.append(
                    f"| {_series_name(entry)} | {lv['concurrency']} | "
                    f"{_f(lv['throughput_rps'])}{flag} | {_f(lv.get('tokens_per_s'))} | "
                    f"{_f(lv['p50_ms'], 2)} | {_f(lv['p95_ms'], 2)} | {_f(lv['p99_ms'], 2)} | "
                    f"{_f(share * 100 if share is not None else None, 0, '%')} | "
                    f"{_f(lv.get('client_cpu_us_per_request'))} | "
                    f"{_f(lv.get('server_cpu_us_per_request'))} | {lv.get('errors', 0)} |")
        out.append("")
    return out


def streaming_tables(results: dict) -> list[str]:
    out = []
    for run in results.get("streaming", []):
        out += [(f"#### {run['model']} — {run['placement']} (state {run['state_bytes']} B per "
                "sequence)"), "",
                ("| open streams | opened | open time s | chunks | chunks/s | tokens/s | p50 ms "
                "| p99 ms | server RSS Δ per open stream | errors |"),
                "|---|---|---|---|---|---|---|---|---|---|"]
        for lv in run.get("levels", []):
            out.append(
                f"| {lv['streams']} | {lv['opened']} | {_f(lv['open_seconds'], 1)} | "
                f"{lv['chunks']} | {_f(lv['chunks_per_s'])} | {_f(lv['tokens_per_s'])} | "
                f"{_f(lv['p50_ms'], 2)} | {_f(lv['p99_ms'], 2)} | "
                f"{_f(lv.get('rss_bytes_per_open_sequence'), 0, ' B')} | {lv['errors']} |")
        seq = run.get("kserve_sequences")
        if seq:
            out += ["", (f"KServe sequences (no open RPC; state + bookkeeping only): "
                    f"{seq['opened']} of {seq['sequences']} held, "
                    f"{_f(seq.get('bytes_per_sequence'), 0, ' B')} RSS per sequence, "
                    f"{_f(seq.get('rss_released_bytes_per_sequence'), 0, ' B')} per sequence "
                    "released after ending them.")]
        pos = run.get("positions")
        if pos:
            out += ["", "| position | samples | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|"]
            for p, s in sorted(pos["by_position"].items(), key=lambda kv: int(kv[0])):
                out.append(f"| {p} | {s['samples']} | {_f(s['p50_ms'], 2)} | "
                           f"{_f(s['p95_ms'], 2)} | {_f(s['p99_ms'], 2)} |")
        out.append("")
    return out


def targets_table(rows: list[dict]) -> list[str]:
    mark = {True: "met", False: "**missed**", None: "n/a"}
    lines = ["| target | scope | goal | measured | status | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['scope']} | {r['goal']} | {r['measured'] or '–'} | "
                     f"{mark[r['met']]} | {r['note']} |")
    return lines


def markdown(results: dict) -> str:
    lines = ["# rnnserve benchmark report", "", "## Machine", "", *machine_section(results), ""]
    lines += ["## Placements", ""]
    for name, p in results.get("placements", {}).items():
        lines.append(f"- **{name}**: {p['description']}")
    lines += ["", "## Raw ONNX Runtime limit (no server)", "", *raw_table(results), "",
              "## Unary (closed loop, one sentence per request)", "", *unary_tables(results),
              "## Streaming", "", *streaming_tables(results),
              "## Targets", "", *targets_table(results.get("targets", [])), ""]
    for kind in ("errors", "skipped"):
        if results.get(kind):
            lines += [f"## {kind.title()}", ""]
            lines += [f"- {e['step']}: {e.get('error') or e.get('reason')}" for e in results[kind]]
            lines.append("")
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------
def _grid(plt, n: int, width: float = 5.0, height: float = 3.6):
    cols = min(2, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_throughput(results: dict, path: Path, plt) -> None:
    panels = _panels(results) or [("", "")]
    fig, axes = _grid(plt, len(panels))
    for ax, (placement, model) in zip(axes, panels, strict=False):
        for entry in results.get("unary", []):
            if (entry["placement"], entry["model"]) != (placement, model):
                continue
            levels = [lv for lv in entry["levels"] if math.isfinite(lv["throughput_rps"])]
            ax.plot([lv["concurrency"] for lv in levels], [lv["throughput_rps"] for lv in levels],
                    marker="o", label=_series_name(entry))
        raw = tg.find_raw(results, placement=placement, model=model)
        if raw:
            ax.axhline(raw["sentences_per_s"], color="k", ls="--", lw=1,
                       label=f"raw ORT limit (b{raw['best_batch']})")
            ax.axhline(raw["pipeline_sentences_per_s"], color="grey", ls=":", lw=1,
                       label="raw tokenize+ORT")
        ax.set(xscale="log", xlabel="concurrency", ylabel="sentences/s",
               title=f"{model} — {placement}")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.45)  # room for the legend above the curves
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", ncol=2)
    _save(fig, path)
    plt.close(fig)


def plot_latency(results: dict, path: Path, plt) -> None:
    panels = _panels(results) or [("", "")]
    fig, axes = _grid(plt, len(panels))
    for ax, (placement, model) in zip(axes, panels, strict=False):
        for i, entry in enumerate(e for e in results.get("unary", [])
                                  if (e["placement"], e["model"]) == (placement, model)):
            color = f"C{i % 10}"
            levels = entry["levels"]
            xs = [lv["concurrency"] for lv in levels]
            ax.plot(xs, [lv["p50_ms"] for lv in levels], color=color, marker="o",
                    label=_series_name(entry))
            ax.plot(xs, [lv["p99_ms"] for lv in levels], color=color, ls="--", marker="x",
                    label="_nolegend_")
            ax.fill_between(xs, [lv["p50_ms"] for lv in levels],
                            [lv["p95_ms"] for lv in levels], color=color, alpha=0.12)
        ax.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="latency ms",
               title=f"{model} — {placement}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("client latency: p50 solid, p50–p95 band, p99 dashed", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def plot_positions(results: dict, path: Path, plt) -> None:
    runs = [r for r in results.get("streaming", []) if r.get("positions")] or [None]
    fig, axes = _grid(plt, len(runs))
    for ax, run in zip(axes, runs, strict=False):
        if run is None:
            ax.text(0.5, 0.5, "no streaming data", ha="center")
            continue
        items = sorted(run["positions"]["by_position"].items(), key=lambda kv: int(kv[0]))
        xs = [int(k) for k, _ in items]
        for key, style in (("p50_ms", "-o"), ("p95_ms", "--s"), ("p99_ms", ":^")):
            ax.plot(xs, [v[key] for _, v in items], style, label=key.replace("_ms", ""))
        ax.set(xscale="log", xlabel="chunk position in stream", ylabel="chunk latency ms",
               title=f"{run['model']} — {run['placement']} "
                     f"({run['positions']['slots']} concurrent streams)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_streams(results: dict, path: Path, plt) -> None:
    runs = results.get("streaming", []) or [None]
    fig, axes = _grid(plt, len(runs))
    for ax, run in zip(axes, runs, strict=False):
        if run is None:
            ax.text(0.5, 0.5, "no streaming data", ha="center")
            continue
        levels = run["levels"]
        xs = [lv["streams"] for lv in levels]
        ax.plot(xs, [lv["chunks_per_s"] for lv in levels], "-o", label="chunks/s")
        ax.set(xscale="log", xlabel="open streams", ylabel="chunks/s",
               title=f"{run['model']} — {run['placement']}")
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        per = [lv.get("rss_bytes_per_open_sequence") for lv in levels]
        twin.plot(xs, [p / 1024 if p is not None else math.nan for p in per], "--s", color="C1",
                  label="server RSS Δ KiB / open stream")
        twin.set_ylabel("KiB per open stream")
        lines = ax.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7)
    _save(fig, path)
    plt.close(fig)


def plot_raw_sweep(results: dict, path: Path, plt) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in results.get("raw_limit", []):
        sweep = r["sweep"]
        ax.plot([s["batch"] for s in sweep], [s["ort"]["sentences_per_s"] for s in sweep], "-o",
                label=f"{r['model']} {r['placement']} ORT")
        ax.plot([s["batch"] for s in sweep], [s["pipeline"]["sentences_per_s"] for s in sweep],
                ":", label=f"{r['model']} {r['placement']} tokenize+ORT")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="sentences/s",
           title="raw ONNX Runtime, no server")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    _save(fig, path)
    plt.close(fig)


def write_report(results: dict, out: Path, *, docs_img: Path | None = None) -> dict[str, Path]:
    """Evaluate targets, write results.json, report.md and the plots; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = tg.evaluate(results)
    paths = {"results": out / "results.json", "report": out / "report.md"}
    for name, fn in zip(PLOTS, (plot_throughput, plot_latency, plot_positions, plot_streams,
                                plot_raw_sweep), strict=True):
        fn(results, out / name, plt)
        paths[name] = out / name
    paths["results"].write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    paths["report"].write_text(markdown(results), encoding="utf-8")
    if docs_img:
        docs_img.mkdir(parents=True, exist_ok=True)
        for name in PLOTS:
            shutil.copyfile(out / name, docs_img / name)
    return paths
