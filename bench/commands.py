"""``rnnserve bench``: run the benchmark suite and write results.json, a markdown report, plots.

Only typer is imported here; the suite (ORT, gRPC, matplotlib) is imported inside the command.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Suite(str, Enum):
    quick = "quick"
    full = "full"
    capacity = "capacity"


class Placement(str, Enum):
    both = "both"
    pinned = "pinned"
    unpinned = "unpinned"


def bench_command(
    suite: Annotated[Suite, typer.Option(help="quick: seconds, smoke-test sized; full: the "
                                         "figures of docs/benchmarks.md; capacity: h2load "
                                         "(C client) against each --workers value beside "
                                         "the same-sentence raw limit.")] = (
        Suite.quick
    ),
    repository: Annotated[
        Path,
        typer.Option("--repository", "-r", help="Model repository holding the models to "
                     "benchmark.", exists=True, file_okay=False),
    ] = Path("model_repository"),
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", metavar="<name>", help="Model to benchmark; repeat for "
                     "several (default: every LSTM/GRU model in the repository, fp32 first)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Output directory for results.json, report, plots.")] = (
        Path("bench-results")
    ),
    placement: Annotated[
        Placement | None,
        typer.Option(help="pinned: client on core 0, server and raw limit on core 1 (taskset); "
                     "unpinned: no affinity (default: both for full, unpinned for quick)."),
    ] = None,
    peers: Annotated[
        bool | None,
        typer.Option(help="Also measure PyTriton and MLServer (default: on for full, off for quick)."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="TSV of sentences (default: SST-2 dev, else generated).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="ORT intra-op threads (default: the "
                                                "server's default; 1 when pinned).")] = None,
    docs_img: Annotated[
        Path | None, typer.Option(help="Also copy the plots here (e.g. docs/img).")
    ] = None,
    nice: Annotated[
        int | None, typer.Option(help="Run every measured process at this nice value (e.g. "
                                 "-10 as root on a machine shared with background work).")
    ] = None,
    workers: Annotated[
        str, typer.Option(help="capacity suite: the rnnserve serve --workers values to "
                          "measure, comma-separated.")
    ] = "1,2",
    frontend: Annotated[
        str, typer.Option(help="capacity suite: the rnnserve serve --frontend values to "
                          "measure, comma-separated (python, native, auto).")
    ] = "python",
    chunks: Annotated[
        int, typer.Option(help="capacity suite: measure StreamClassify, each request a "
                          "stream of this many chunks (0: unary Classify).")
    ] = 0,
) -> None:
    """Benchmark the server against the raw ONNX Runtime limit (and, in full, peer servers).

    Writes results.json, report.md and plots under --out.
    """
    if suite is Suite.capacity:
        from rnnserve.bench import capacity

        models = model or []
        if len(models) != 1:
            raise typer.BadParameter("the capacity suite measures one --model")
        argv = ["--repository", str(repository), "--model", models[0], "--workers", workers,
                "--frontend", frontend, "--out", str(out), "--chunks", str(chunks),
                "--install"]
        if placement is not None and placement is not Placement.both:
            argv += ["--placement", placement.value]
        raise typer.Exit(capacity.main(argv))
    from rnnserve.bench.suite import SuiteOptions, run_suite

    options = SuiteOptions.for_suite(
        suite.value,
        repository=repository,
        models=model or None,
        out=out,
        placement=placement.value if placement else None,
        peers=peers,
        data=data,
        threads=threads,
        docs_img=docs_img,
        nice=nice,
    )
    results = run_suite(options, log=typer.echo)
    typer.echo(f"wrote {results['paths']['results']} and {results['paths']['report']}")
