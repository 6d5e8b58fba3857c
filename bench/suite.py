"""The benchmark suite: every system measured one at a time, in one invocation.

For each placement (pinned: client on core 0, server and raw limit on core 1; unpinned) and
each model, in this order, with nothing else of ours running beside the measured system:

1. the raw ONNX Runtime limit (``raw_limit``), on the server's core;
2. rnnserve (text API and KServe v2 unary over concurrency levels; KServe also through
   perf_analyzer when available; streaming for primary models);
3. rnnserve with batching disabled (``RNNSERVE_MAX_BATCH_SIZE=1``), text API;
4. peers (full suite): PyTriton driven by perf_analyzer (and our load generator), MLServer
   driven by our load generator (it has no ModelConfig RPC, which perf_analyzer needs).

Every step is bounded in requests and seconds; a failing step is recorded under ``errors``
and the suite goes on. ``report.write_report`` turns the result into markdown and plots.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rnnserve.bench import peer_servers as peers_runtime
from rnnserve.bench.data import load_sentences
from rnnserve.bench.machine import machine_info
from rnnserve.bench.procs import (
    PLACEMENTS,
    Placement,
    ServerProcess,
    free_port,
    raise_priority,
    run_module_json,
)

from rnnserve import repository as repo_contract

#: Default ORT intra-op threads for every system (one core per server when pinned).
DEFAULT_THREADS = 1


@dataclass
class SuiteOptions:
    """What to measure and how long; ``for_suite`` fills the quick/full presets."""

    suite: str
    repository: Path
    out: Path
    models: list[str] | None = None
    placements: list[str] = field(default_factory=lambda: ["unpinned"])
    peers: bool = False
    data: Path | None = None
    threads: int = DEFAULT_THREADS
    docs_img: Path | None = None
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    count: int = 300
    duration: float = 3.0
    warmup: int = 10
    raw_batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16])
    raw_seconds: float = 0.2
    nobatch_concurrency: list[int] = field(default_factory=lambda: [1, 16])
    stream_levels: list[int] = field(default_factory=lambda: [10, 50])
    stream_chunks: int = 300
    stream_duration: float = 3.0
    positions: list[int] = field(default_factory=lambda: [1, 10])
    position_slots: int = 4
    position_chunks: int = 200
    position_duration: float = 6.0
    perf_analyzer: bool = False
    loadgen_on_pytriton: bool = True
    mlserver_max_batch_time: float = 0.0005
    #: Nice value for the whole run (every measured process inherits it); e.g. -10 on a
    #: machine shared with background work, so wake-ups of the measured threads are not
    #: queued behind it. None leaves the priority as it is.
    nice: int | None = None

    @classmethod
    def for_suite(cls, suite: str, *, repository: Path, out: Path, models=None, placement=None,
                  peers=None, data=None, threads=None, docs_img=None,
                  nice=None) -> SuiteOptions:
        if suite == "quick":
            options = cls(suite="quick", repository=repository, out=out)
        elif suite == "full":
            options = cls(
                suite="full", repository=repository, out=out,
                placements=["pinned", "unpinned"], peers=True,
                concurrency=[1, 4, 16, 64, 256], count=3000, duration=4.0, warmup=100,
                raw_batch_sizes=[1, 2, 4, 8, 16, 32, 64], raw_seconds=0.6,
                nobatch_concurrency=[1, 4, 16, 64, 256],
                stream_levels=[10, 100, 1000, 10000], stream_chunks=8000, stream_duration=6.0,
                positions=[1, 10, 100, 1000], position_slots=8, position_chunks=14000,
                position_duration=45.0,
                perf_analyzer=True,
            )
        else:
            raise ValueError(f"unknown suite {suite!r}: quick or full")
        options.models = models
        if placement:
            options.placements = ["pinned", "unpinned"] if placement == "both" else [placement]
        if peers is not None:
            options.peers = peers
        options.data = data
        if threads:
            options.threads = threads
        options.docs_img = docs_img
        options.nice = nice
        return options


@dataclass
class ModelUnderTest:
    name: str
    role: str  # "primary": every measurement; "variant" (int8): raw limit + rnnserve unary
    files_dir: Path
    metadata: dict
    max_batch_size: int
    #: Streaming is measured on the first primary model only (the default model).
    streaming: bool = False

    @property
    def device(self) -> str:
        """fp16 models run on CUDA (they are only measured when a GPU exists), others on CPU."""
        return "cuda" if self.metadata["precision"] == "fp16" else "cpu"

    @property
    def label(self) -> str:
        m = self.metadata
        return (f"{self.name} ({m['cell'].upper()} {m['layers']}x{m['hidden']}, "
                f"embed {m['embed_dim']}, {m['precision']})")


def select_models(repository: Path, names: list[str] | None) -> list[ModelUnderTest]:
    """Models to measure: ``names`` or every model in the repository; fp32 ones are primary."""
    from rnnserve.bench.raw_limit import resolve_model

    chosen = names or repo_contract.list_models(repository)
    models = []
    for name in chosen:
        files = resolve_model(repository, name)
        config = repo_contract.read_model_config(repository / name / repo_contract.CONFIG_FILE)
        meta = files.metadata
        models.append(ModelUnderTest(
            name=name,
            role="primary" if meta.precision == "fp32" else "variant",
            files_dir=files.directory,
            metadata=json.loads(meta.model_dump_json()),
            max_batch_size=max(1, int(config.max_batch_size)),
        ))
    if not models:
        raise RuntimeError(f"no models in {repository}")
    # Primary models first, larger first: the default model leads the report.
    models.sort(key=lambda m: (m.role != "primary", -m.metadata["hidden"] * m.metadata["layers"]))
    first = next((m for m in models if m.role == "primary" and not m.metadata["bidirectional"]),
                 None)
    if first is not None:
        first.streaming = True
    return models


def write_corpus(model: ModelUnderTest, sentences: list[str], path: Path) -> dict:
    """Sentences and their token counts under this model's tokenizer (for tokens/s)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model.files_dir / repo_contract.TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokens = [max(1, len(e.ids)) for e in tokenizer.encode_batch(sentences,
                                                                 add_special_tokens=False)]
    path.write_text(json.dumps({"sentences": sentences, "tokens": tokens}), encoding="utf-8")
    return {"sentences": len(sentences), "mean_tokens": sum(tokens) / len(tokens)}


class Suite:
    """One run: options, the results dict it fills, logging and per-step error capture."""

    def __init__(self, options: SuiteOptions, log: Callable[[str], None]) -> None:
        self.o = options
        self.log = log
        self.out = Path(options.out)
        self.work = self.out / "work"
        self.logs = self.out / "logs"
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.results: dict = {
            "suite": options.suite,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "options": {k: (str(v) if isinstance(v, Path) else v)
                        for k, v in asdict(options).items()},
            "machine": machine_info(),
            "raw_limit": [], "unary": [], "streaming": [], "errors": [], "skipped": [],
        }

    # -- helpers ---------------------------------------------------------------------------
    def step(self, what: str, fn: Callable[[], object]):
        """Run one measurement; on failure record the error and carry on."""
        t0 = time.monotonic()
        self.log(f"[bench] {what} ...")
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - a failed step must not end the suite
            self.log(f"[bench] {what} FAILED: {exc}")
            self.results["errors"].append({"step": what, "error": f"{type(exc).__name__}: {exc}",
                                           "trace": traceback.format_exc(limit=5)})
            return None
        self.log(f"[bench] {what} done in {time.monotonic() - t0:.1f}s")
        return value

    def _tag(self, placement: Placement, model: ModelUnderTest) -> str:
        return f"{placement.name}-{model.name}"

    def rnnserve_server(self, placement: Placement, model: ModelUnderTest, *,
                        max_batch_size: int | None = None, tag: str = "") -> ServerProcess:
        port = free_port()
        env = dict(os.environ)
        env.update({
            "RNNSERVE_REPOSITORY": str(self.o.repository),
            "RNNSERVE_HOST": "127.0.0.1",
            "RNNSERVE_PORT": str(port),
            "RNNSERVE_METRICS_HOST": "127.0.0.1",
            "RNNSERVE_METRICS_PORT": str(free_port()),
            "RNNSERVE_DEVICE": model.device,
            "RNNSERVE_INTRA_OP_THREADS": str(self.o.threads),
            "RNNSERVE_LOG_LEVEL": "WARNING",
            "RNNSERVE_MAX_SEQUENCES": str(max(self.o.stream_levels, default=0) + 1024),
            "RNNSERVE_MAX_QUEUE_SIZE": str(max(16384, 2 * max(self.o.stream_levels, default=0))),
        })
        if max_batch_size:
            env["RNNSERVE_MAX_BATCH_SIZE"] = str(max_batch_size)
        argv = [sys.executable, "-m", "rnnserve.cli", "serve"]
        name = f"rnnserve{tag}"
        return ServerProcess(name, argv, self.logs / f"{name}-{self._tag(placement, model)}.log",
                             port, env=env, cpus=placement.server_cpus)

    def loadgen(self, placement: Placement, server: ServerProcess, model_name: str, api: str,
                corpus: Path, levels: list[int], tag: str) -> list[dict]:
        args = ["--target", server.target, "--api", api, "--model", model_name,
                "--tokens-json", str(corpus), "--concurrency", ",".join(map(str, levels)),
                "--count", str(self.o.count), "--duration", str(self.o.duration),
                "--warmup", str(self.o.warmup), "--server-pgid", str(server.pid)]
        timeout = len(levels) * (self.o.duration * 1.3 + 30) + 60
        return run_module_json("rnnserve.bench.loadgen", args, cpus=placement.client_cpus,
                               out_json=self.work / f"loadgen-{tag}.json",
                               log_path=self.logs / f"loadgen-{tag}.log", timeout=timeout)

    def record_unary(self, placement, model, system, api, driver, levels, server=None, **extra):
        entry = {"placement": placement.name, "model": model.name, "system": system, "api": api,
                 "driver": driver, "levels": levels, **extra}
        self.results["unary"].append(entry)
        return entry

    # -- measurements ----------------------------------------------------------------------
    def raw_limit(self, placement: Placement, model: ModelUnderTest, corpus_meta: dict) -> None:
        tag = self._tag(placement, model)
        args = ["--repository", str(self.o.repository), "--model", model.name,
                "--threads", str(self.o.threads),
                "--batch-sizes", ",".join(map(str, self.o.raw_batch_sizes)),
                "--seconds", str(self.o.raw_seconds)]
        if self.o.data:
            args += ["--data", str(self.o.data)]
        if model.device == "cuda":
            args += ["--provider", "CUDAExecutionProvider", "--provider", "CPUExecutionProvider"]
        result = run_module_json("rnnserve.bench.raw_limit", args, cpus=placement.server_cpus,
                                 out_json=self.work / f"raw-{tag}.json",
                                 log_path=self.logs / f"raw-{tag}.log",
                                 timeout=len(self.o.raw_batch_sizes) * self.o.raw_seconds * 4 + 120)
        result.update(placement=placement.name, cpus=placement.server_cpus, **corpus_meta)
        self.results["raw_limit"].append(result)

    def rnnserve_runs(self, placement: Placement, model: ModelUnderTest, corpus: Path) -> None:
        tag = self._tag(placement, model)
        levels = self.o.concurrency
        with self.rnnserve_server(placement, model) as server:
            self.step(f"{tag}: start rnnserve", lambda: server.start([model.name]))
            started = server.proc is not None and server.proc.poll() is None
            rss_idle = _rss(server.pid) if started else None
            apis = ("text", "kserve") if model.role == "primary" else ("text",)
            for api in apis if started else ():
                self.step(f"{tag}: rnnserve {api} (loadgen)", lambda api=api: self.record_unary(
                    placement, model, "rnnserve", api, "loadgen",
                    self.loadgen(placement, server, model.name, api, corpus, levels,
                                 f"rnnserve-{api}-{tag}"),
                    server_rss_idle=rss_idle, server_rss_after=_rss(server.pid)))
            if started and self.o.perf_analyzer and model.role == "primary":
                self.step(f"{tag}: rnnserve kserve (perf_analyzer)",
                          lambda: self.perf_analyzer(placement, model, "rnnserve", server,
                                                     corpus, tag))
        # Streaming is measured in the first placement only (pinned in the full suite).
        if model.streaming and self.o.stream_levels and placement.name == self.o.placements[0]:
            # A fresh server, so memory per open sequence is measured from a clean baseline.
            with self.rnnserve_server(placement, model, tag="-stream") as server:
                self.step(f"{tag}: start rnnserve (streaming)", lambda: server.start([model.name]))
                if server.proc is not None and server.proc.poll() is None:
                    self.step(f"{tag}: rnnserve streaming",
                              lambda: self.streaming(placement, model, server, corpus, tag))
        if model.role == "primary" and self.o.nobatch_concurrency:
            with self.rnnserve_server(placement, model, max_batch_size=1, tag="-nobatch") as nob:
                self.step(f"{tag}: start rnnserve (max batch 1)", lambda: nob.start([model.name]))
                if nob.proc is not None and nob.proc.poll() is None:
                    self.step(f"{tag}: rnnserve max-batch-1 text (loadgen)",
                              lambda: self.record_unary(
                                  placement, model, "rnnserve-nobatch", "text", "loadgen",
                                  self.loadgen(placement, nob, model.name, "text", corpus,
                                               self.o.nobatch_concurrency,
                                               f"rnnserve-nobatch-{tag}")))

    def streaming(self, placement, model, server, corpus: Path, tag: str) -> None:
        args = ["--target", server.target, "--model", model.name, "--tokens-json", str(corpus),
                "--streams", ",".join(map(str, self.o.stream_levels)),
                "--max-chunks", str(self.o.stream_chunks),
                "--duration", str(self.o.stream_duration), "--server-pid", str(server.pid),
                "--positions", ",".join(map(str, self.o.positions)),
                "--slots", str(self.o.position_slots),
                "--position-chunks", str(self.o.position_chunks),
                "--position-duration", str(self.o.position_duration),
                "--kserve-sequences", str(max(self.o.stream_levels))]
        timeout = (len(self.o.stream_levels) * (self.o.stream_duration + 150)
                   + self.o.position_duration + 180)
        result = run_module_json("rnnserve.bench.streams", args, cpus=placement.client_cpus,
                                 out_json=self.work / f"streams-{tag}.json",
                                 log_path=self.logs / f"streams-{tag}.log", timeout=timeout)
        result.update(placement=placement.name, model=model.name,
                      state_bytes=_state_bytes(model.metadata))
        self.results["streaming"].append(result)

    def perf_analyzer(self, placement, model, system, server, corpus: Path, tag: str) -> None:
        from rnnserve.bench import pa

        levels = pa.run_levels(
            target=server.target, model=model.name, corpus=corpus,
            levels=self.o.concurrency, cpus=placement.client_cpus,
            work=self.work / f"pa-{system}-{tag}", log_path=self.logs / f"pa-{system}-{tag}.log",
            count=self.o.count, duration=self.o.duration, server_pgid=server.pid,
        )
        self.record_unary(placement, model, system, "kserve", "perf_analyzer", levels)

    def peer_runs(self, placement: Placement, model: ModelUnderTest, corpus: Path) -> None:
        tag = self._tag(placement, model)
        levels = self.o.concurrency
        for peer in ("pytriton", "mlserver"):
            if not peers_runtime.venv_python(peer).exists():
                self.results["skipped"].append(
                    {"step": f"{tag}: {peer}", "reason": f"venv missing: run "
                     f"bench/peers/install_{peer}.sh"})
                continue
            server = peers_runtime.peer_server(
                peer, model_dir=model.files_dir, name=model.name, threads=self.o.threads,
                max_batch_size=model.max_batch_size, cpus=placement.server_cpus,
                log_path=self.logs / f"{peer}-{tag}.log", work=self.work / f"{peer}-{tag}",
                mlserver_max_batch_time=self.o.mlserver_max_batch_time,
            )
            with server:
                self.step(f"{tag}: start {peer}", lambda s=server: s.start([model.name],
                                                                            timeout=300))
                if server.proc is None or server.proc.poll() is not None:
                    continue
                if peer == "pytriton" and self.o.perf_analyzer:
                    self.step(f"{tag}: pytriton (perf_analyzer)",
                              lambda s=server: self.perf_analyzer(placement, model, "pytriton",
                                                                  s, corpus, tag))
                if peer == "mlserver" or self.o.loadgen_on_pytriton:
                    self.step(f"{tag}: {peer} kserve (loadgen)",
                              lambda s=server, p=peer: self.record_unary(
                                  placement, model, p, "kserve", "loadgen",
                                  self.loadgen(placement, s, model.name, "kserve", corpus,
                                               levels, f"{p}-{tag}")))

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict:
        t0 = time.monotonic()
        sentences, source = load_sentences(self.o.data)
        models = select_models(self.o.repository, self.o.models)
        self.results.update(
            data_source=source, sentences=len(sentences),
            models=[{"name": m.name, "role": m.role, "label": m.label,
                     "max_batch_size": m.max_batch_size, **m.metadata} for m in models],
            placements={p: asdict(PLACEMENTS[p]) | {"description": PLACEMENTS[p].describe()}
                        for p in self.o.placements},
        )
        gpu = self.results["machine"].get("gpu")
        for model in [m for m in models if m.metadata["precision"] == "fp16"]:
            if not gpu:
                self.results["skipped"].append({"step": f"{model.name} (fp16)", "reason":
                                                "fp16 runs on the CUDA execution provider; "
                                                "this machine has no GPU"})
        models = [m for m in models if m.metadata["precision"] != "fp16" or gpu]
        for placement_name in self.o.placements:
            placement = PLACEMENTS[placement_name]
            for model in models:
                corpus = self.work / f"corpus-{model.name}.json"
                meta = write_corpus(model, sentences, corpus)
                tag = self._tag(placement, model)
                self.step(f"{tag}: raw ORT limit",
                          lambda p=placement, m=model, c=meta: self.raw_limit(p, m, c))
                self.rnnserve_runs(placement, model, corpus)
                if self.o.peers and model.role == "primary":
                    self.peer_runs(placement, model, corpus)
        self.results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.results["duration_s"] = time.monotonic() - t0
        return self.results


def _rss(pid: int | None) -> int | None:
    from rnnserve.bench.streams import rss_bytes

    return rss_bytes(pid)


def _state_bytes(meta: dict) -> int:
    rows = meta["layers"] * (2 if meta.get("bidirectional") else 1)
    return rows * meta["hidden"] * 4 * (2 if meta["cell"] == "lstm" else 1)


def run_suite(options: SuiteOptions, log: Callable[[str], None] = print) -> dict:
    """Run the suite, write results.json, the markdown report and the plots; return results."""
    from rnnserve.bench.report import write_report

    if options.nice is not None:
        raise_priority(options.nice)  # inherited by every measured process
    results = Suite(options, log).run()
    paths = write_report(results, Path(options.out), docs_img=options.docs_img)
    results["paths"] = {k: str(v) for k, v in paths.items()}
    return results
