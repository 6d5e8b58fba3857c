"""Render what an operator sees: the Grafana dashboard's own queries, as PNGs, from a real run.

By default it runs everything itself: a throw-away Prometheus (1 s scrapes, the deploy
recording rules), one rnnserve process, and a scripted load in phases (quiet, ramp, peak
with a few invalid requests, stream-heavy with some abandoned streams that expire, cool
down). It then evaluates every query of ``deploy/grafana/rnnserve.json`` over the run with
Prometheus' ``query_range`` and draws the panels with matplotlib::

    python -m rnnserve.bench.metrics_plots --tiny --out docs/img          # ~2.5 minutes
    python -m rnnserve.bench.metrics_plots --repository model_repository --out docs/img
    python -m rnnserve.bench.metrics_plots --prometheus http://127.0.0.1:9090 \
        --start 1700000000 --end 1700000600 --out /tmp/plots             # plot only

Invariant: the plotted expressions are exactly the dashboard's, with ``$model``/``$api``
matching everything and ``$__rate_interval`` replaced by ``--rate-interval``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "rnnserve.json"
RULES = ROOT / "deploy" / "prometheus" / "rnnserve.rules.yml"


# ----------------------------------------------------------------------------- the load

@dataclass(frozen=True)
class Phase:
    """One stretch of the scripted load: concurrent workers of each kind."""

    name: str
    seconds: float
    unary: int          # text-API Classify workers (1-3 texts per call)
    kserve: int         # KServe ModelInfer workers (1 text per call)
    streams: int        # StreamClassify workers (3-6 chunks, then end)
    abandoned: int = 0  # streams that send one chunk and go quiet until they expire
    invalid_every: int = 0  # every n-th Classify has no texts (INVALID_ARGUMENT)


PHASES = (
    Phase("quiet", 15, unary=2, kserve=1, streams=1),
    Phase("ramp", 25, unary=16, kserve=4, streams=6),
    Phase("peak", 25, unary=48, kserve=8, streams=12, invalid_every=40),
    Phase("streams", 25, unary=4, kserve=1, streams=48, abandoned=6),
    Phase("cool", 15, unary=2, kserve=0, streams=0),
)


async def drive(target: str, models: list[str], sentences: list[str],
                phases: tuple[Phase, ...] = PHASES, log=print) -> list[tuple[str, float]]:
    """Run the phases against ``target``; returns (phase, start unix time) marks."""
    import grpc
    from rnnserve.protos import sentiment_pb2 as pb
    from rnnserve.protos import sentiment_pb2_grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    rng = random.Random(0)
    marks = []
    async with grpc.aio.insecure_channel(target) as channel:
        text = sentiment_pb2_grpc.SentimentStub(channel)
        kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        counter = 0

        async def unary(deadline: float, invalid_every: int) -> None:
            nonlocal counter
            while time.monotonic() < deadline:
                counter += 1
                texts = [] if invalid_every and counter % invalid_every == 0 else \
                    rng.sample(sentences, rng.randint(1, 3))
                try:
                    await text.Classify(pb.ClassifyRequest(texts=texts, model=rng.choice(models)),
                                        timeout=30)
                except grpc.aio.AioRpcError:
                    pass

        async def infer(deadline: float) -> None:
            while time.monotonic() < deadline:
                request = service_pb2.ModelInferRequest(model_name=rng.choice(models))
                tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
                tensor.contents.bytes_contents.append(rng.choice(sentences).encode())
                try:
                    await kserve.ModelInfer(request, timeout=30)
                except grpc.aio.AioRpcError:
                    pass

        async def stream(deadline: float, abandon: bool) -> None:
            while time.monotonic() < deadline:
                words = rng.choice(sentences).split()
                n = 1 if abandon else rng.randint(3, 6)
                size = max(1, len(words) // n)
                chunks = [" ".join(words[i * size:(i + 1) * size]) or "fine" for i in range(n)]
                call = text.StreamClassify(timeout=60)
                try:
                    for i, chunk in enumerate(chunks):
                        first = {"model": rng.choice(models)} if i == 0 else {}
                        await call.write(pb.StreamClassifyRequest(
                            text=chunk, end=not abandon and i == n - 1, **first))
                        await call.read()
                        await asyncio.sleep(rng.uniform(0.01, 0.1))
                    if abandon:  # quiet past the idle timeout: the server expires it
                        await asyncio.sleep(max(0.0, min(12.0, deadline - time.monotonic())))
                        call.cancel()
                    else:
                        await call.done_writing()
                except grpc.aio.AioRpcError:
                    pass

        for phase in phases:
            log(f"[metrics-plots] phase {phase.name}: {phase.seconds:.0f} s, "
                f"{phase.unary} text + {phase.kserve} kserve + {phase.streams} stream workers")
            marks.append((phase.name, time.time()))
            deadline = time.monotonic() + phase.seconds
            await asyncio.gather(
                *(unary(deadline, phase.invalid_every) for _ in range(phase.unary)),
                *(infer(deadline) for _ in range(phase.kserve)),
                *(stream(deadline, False) for _ in range(phase.streams)),
                *(stream(deadline, True) for _ in range(phase.abandoned)))
    return marks


# ------------------------------------------------------------------------- the queries

def dashboard_panels(rate_interval: str) -> list[dict]:
    """The dashboard's stat and timeseries panels with their queries made concrete."""
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] not in ("timeseries", "stat"):
            continue
        targets = []
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", rate_interval)
            targets.append({"expr": re.sub(r"\$(model|api)\b", ".*", expr),
                            "legend": target.get("legendFormat", "")})
        panels.append({"title": panel["title"], "type": panel["type"], "targets": targets,
                       "unit": panel["fieldConfig"]["defaults"].get("unit", "short"),
                       "overrides": panel["fieldConfig"].get("overrides", [])})
    return panels


def legend(template: str, metric: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), template) or \
        ",".join(f"{k}={v}" for k, v in metric.items() if k != "__name__")


def fetch(prometheus, panels: list[dict], start: float, end: float, step: float) -> None:
    """Attach query_range results (series of (t, v)) to every panel target."""
    for panel in panels:
        for target in panel["targets"]:
            series = []
            for result in prometheus.query_range(target["expr"], start, end, step):
                points = [(float(t), float(v)) for t, v in result["values"]]
                series.append((legend(target["legend"], result["metric"]), points))
            target["series"] = series


# ----------------------------------------------------------------------------- drawing

UNIT_SCALE = {"s": (1e3, "ms"), "bytes": (1 / 1024, "KiB"), "percentunit": (100, "%"),
              "reqps": (1, "req/s"), "short": (1, "")}


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "percentunit":
        return f"{value * 100:.2f} %"
    if unit == "reqps":
        return f"{value:.1f} req/s"
    return f"{value:.3g}"


def draw(panels: list[dict], out: Path, marks: list[tuple[str, float]], title: str) -> list[Path]:
    """dashboard.png (every panel) and one PNG per timeseries panel; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    stats = [p for p in panels if p["type"] == "stat"]
    series_panels = [p for p in panels if p["type"] == "timeseries"]
    rows = math.ceil(len(series_panels) / 2)
    height = 1.4 + 3.0 * rows
    fig = plt.figure(figsize=(15, height), dpi=100)
    grid = fig.add_gridspec(rows, 2, top=1 - 1.45 / height, bottom=0.25 / height, hspace=0.5,
                            wspace=0.15, left=0.05, right=0.97)
    fig.text(0.01, 1 - 0.25 / height, title, fontsize=13, ha="left", va="center")
    for i, panel in enumerate(stats):
        texts = []
        for target in panel["targets"]:
            for name, points in target["series"]:
                finite = [v for _, v in points if math.isfinite(v)]
                if panel["title"] == "Execution provider":
                    texts.append(name)
                elif finite:
                    texts.append(_fmt(finite[-1], panel["unit"]))
        x = (i + 0.5) / max(1, len(stats))
        fig.text(x, 1 - 0.65 / height, panel["title"] + " (at end)" * (panel["title"] in
                 ("Requests/s", "p99 latency", "Error ratio", "Open sequences")),
                 ha="center", fontsize=9, color="#555")
        small = panel["title"] == "Execution provider" or len(texts) > 1
        fig.text(x, 1 - 1.0 / height, "\n".join(texts[:2]) or "-", ha="center", va="center",
                 fontsize=8 if small else 12, weight="bold")
    paths = []
    for i, panel in enumerate(series_panels):
        ax = fig.add_subplot(grid[i // 2, i % 2])
        _plot_panel(ax, panel, marks, mdates)
        single, single_ax = plt.subplots(figsize=(8, 3.6), dpi=100)
        _plot_panel(single_ax, panel, marks, mdates)
        single.tight_layout()
        path = out / f"metrics-{_slug(panel['title'])}.png"
        single.savefig(path)
        plt.close(single)
        paths.append(path)
    dashboard = out / "metrics-dashboard.png"
    fig.savefig(dashboard)
    plt.close(fig)
    return [dashboard, *paths]


def _right_axis_override(panel: dict, name: str) -> dict | None:
    """The panel's field override that puts series ``name`` on the right axis, if any."""
    for override in panel["overrides"]:
        matcher = override["matcher"]
        if not any(p["id"] == "custom.axisPlacement" for p in override["properties"]):
            continue
        if matcher["id"] == "byName" and matcher["options"] == name or \
                matcher["id"] == "byRegexp" and re.search(matcher["options"], name):
            return override
    return None


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _plot_panel(ax, panel: dict, marks, mdates) -> None:
    scale, label = UNIT_SCALE.get(panel["unit"], (1, panel["unit"]))
    right = None
    color = 0
    for target in panel["targets"]:
        for name, points in target["series"]:
            times = [datetime.fromtimestamp(t) for t, _ in points]
            override = _right_axis_override(panel, name)
            if override is not None:
                right = right or ax.twinx()
                unit = next((p["value"] for p in override["properties"] if p["id"] == "unit"),
                            panel["unit"])
                right_scale, right_label = UNIT_SCALE.get(unit, (1, unit))
                right.plot(times, [v * right_scale for _, v in points], "--", label=name,
                           color=f"C{color}")
                right.set_ylabel(right_label or "right axis", fontsize=8)
                right.tick_params(labelsize=8)
            else:
                ax.plot(times, [v * scale for _, v in points], label=name, linewidth=1.4,
                        color=f"C{color}")
            color += 1
    for name, start in marks:
        ax.axvline(datetime.fromtimestamp(start), color="#bbb", linewidth=0.8, zorder=0)
        ax.annotate(name, (datetime.fromtimestamp(start), 1.0), xycoords=("data", "axes fraction"),
                    fontsize=7, color="#888", va="top", ha="left", xytext=(2, -2),
                    textcoords="offset points")
    ax.set_title(panel["title"], fontsize=10, loc="left")
    ax.set_ylabel(label, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.grid(alpha=0.3)
    if panel["unit"] != "short" or panel["title"] != "Padding ratio":
        ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    if right is not None:
        right.set_ylim(bottom=0)
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper right", ncol=2)
    else:
        ax.text(0.5, 0.5, "no data in this run", transform=ax.transAxes, ha="center",
                color="#888")


# ------------------------------------------------------------------------------- main

def run_everything(args: argparse.Namespace, work: Path, log=print) -> list[Path]:
    from rnnserve.bench.data import load_sentences
    from rnnserve.bench.procs import ServerProcess, free_port
    from rnnserve.bench.prometheus_runner import PrometheusRunner

    from rnnserve.repository import list_models

    repository = args.repository
    if args.tiny:
        repository = tiny_repository(work)
    models = args.models.split(",") if args.models else list_models(repository)
    sentences, source = load_sentences(limit=2000)
    port, metrics_port = free_port(), free_port()
    env = dict(os.environ)
    env.update({"RNNSERVE_REPOSITORY": str(repository), "RNNSERVE_HOST": "127.0.0.1",
                "RNNSERVE_PORT": str(port), "RNNSERVE_METRICS_HOST": "127.0.0.1",
                "RNNSERVE_METRICS_PORT": str(metrics_port), "RNNSERVE_DEVICE": "cpu",
                "RNNSERVE_LOG_LEVEL": "WARNING", "RNNSERVE_SEQUENCE_IDLE_SECONDS": "5"})
    prometheus = PrometheusRunner([f"127.0.0.1:{metrics_port}"], work / "prometheus",
                                  rule_files=[RULES]).start()
    server = ServerProcess("rnnserve", [sys.executable, "-m", "rnnserve.cli", "serve"],
                           work / "rnnserve.log", port, env=env)
    try:
        server.start(models)
        prometheus.wait_for('up{job="rnnserve"}', lambda v: v == 1, timeout=30)
        log(f"[metrics-plots] serving {', '.join(models)} from {repository}; "
            f"sentences: {source}; Prometheus at {prometheus.url}")
        time.sleep(3)
        marks = asyncio.run(drive(server.target, models, sentences, log=log))
        end = time.time() + 3
        time.sleep(4)
        start = marks[0][1] - 5
        panels = dashboard_panels(args.rate_interval)
        fetch(prometheus, panels, start, end, args.step)
        title = (f"rnnserve dashboard queries over a {end - start:.0f} s scripted run "
                 f"({', '.join(models)}, CPU) - rate interval {args.rate_interval}")
        if args.save_data:
            args.save_data.write_text(json.dumps({"panels": panels, "marks": marks,
                                                  "title": title}))
        return draw(panels, args.out, marks, title)
    finally:
        server.stop()
        prometheus.stop()


def tiny_repository(directory: Path) -> Path:
    """The tests' tiny LSTM and GRU, trained on generated data and exported."""
    from rnnserve.export.exporter import export_checkpoint
    from rnnserve.train.config import PLAIN_TRAINING
    from rnnserve.train.synthetic import write_synthetic_dataset
    from rnnserve.train.trainer import TrainConfig, train

    data = write_synthetic_dataset(directory / "tiny.tsv", n=600, seed=0)
    for cell in ("lstm", "gru"):
        config = TrainConfig(cell=cell, data=str(data), out=directory / cell, embed_dim=16,
                             hidden=24, layers=2, epochs=2, batch_size=32, vocab_size=400,
                             seed=0, progress=False, **PLAIN_TRAINING)
        export_checkpoint(train(config).checkpoint_dir, repository=directory / "repository",
                          name=f"tiny-{cell}")
    return directory / "repository"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--models", default=None, help="comma-separated (default: all)")
    parser.add_argument("--tiny", action="store_true", help="train + export tiny models first")
    parser.add_argument("--rate-interval", default="10s")
    parser.add_argument("--step", type=float, default=1.0)
    parser.add_argument("--prometheus", default=None, help="plot only, from this Prometheus")
    parser.add_argument("--start", type=float, default=None)
    parser.add_argument("--end", type=float, default=None)
    parser.add_argument("--save-data", type=Path, default=None,
                        help="also write the fetched series as JSON (for --replot)")
    parser.add_argument("--replot", type=Path, default=None,
                        help="draw from a --save-data JSON instead of querying")
    args = parser.parse_args(argv)

    if args.replot:
        data = json.loads(args.replot.read_text())
        paths = draw(data["panels"], args.out, [tuple(m) for m in data["marks"]], data["title"])
    elif args.prometheus:
        from rnnserve.bench.prometheus_runner import PrometheusRunner

        prometheus = PrometheusRunner.attach(args.prometheus)
        end = args.end or time.time()
        start = args.start or end - 600
        panels = dashboard_panels(args.rate_interval)
        fetch(prometheus, panels, start, end, args.step)
        paths = draw(panels, args.out, [], "rnnserve dashboard queries")
    else:
        with tempfile.TemporaryDirectory(prefix="rnnserve-metrics-plots-") as tmp:
            paths = run_everything(args, Path(tmp))
    for path in paths:
        print(f"[metrics-plots] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
