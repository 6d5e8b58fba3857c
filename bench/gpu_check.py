"""The GPU check: proves (or disproves) the CUDA path on a machine with a GPU, in one run.

Run through ``scripts/gpu-check.sh`` (which makes ``rnnserve`` importable without installing
it). Models come from ``prepare`` (run on a development machine with ``.[dev]``: it trains and
exports tiny models, so the GPU machine needs neither torch nor onnx). Sections, each printed
as it finishes, failures collected and the exit status 1 if any:

1. versions: Python, onnxruntime, the CUDA probe (driver, runtime, cuDNN, devices);
2. CUDA is the active provider of every fp32 model (``--device cuda``);
3. per-node providers and Memcpy nodes from an ORT profile;
4. CPU vs CUDA logits and states: LSTM and GRU, 1 and 2 layers, mixed lengths, random
   state, TF32 off (asserted at 1e-5) and on (reported);
5. chunked = whole on CUDA; the device state pool vs the host pool on CPU;
6. fp16 vs fp32 on CUDA (max diff, argmax agreement); int8 reported pinned to CPU;
7. fallback: ``CUDA_VISIBLE_DEVICES=`` makes ``--device cuda`` refuse and ``auto`` fall back;
8. 30 s of a two-instance CUDA server under random shapes (texts and streams, so the
   device state pool serves live sequences), answers checked against a CPU server;
9. bench: model latency for B in {1, 64} x T in {16, 256} (CUDA and CPU); one stream step
   of 64 sequences with the host and the device state pool; server throughput with
   instances 1, 2, 4, ... up to the CPU count.

``--cpu-smoke`` runs everything with CPU in place of CUDA (no assertion that CUDA is active,
no fallback or bench sections): how the script itself is tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

FP32_MODELS = ("chk-lstm1", "chk-lstm2", "chk-gru1", "chk-gru2")
FAILURES: list[str] = []
VOCABULARY = ["good", "bad", "film", "movie", "great", "awful", "plot", "actor", "boring", "fun",
              "love", "hate", "the", "a", "was", "very", "not", "really", "story", "ending"]


def say(text: str = "") -> None:
    print(text, flush=True)


def check(ok: bool, what: str) -> None:
    say(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        FAILURES.append(what)


def section(title: str) -> None:
    say(f"\n== {title}")


# -- preparation (development machine) ----------------------------------------------------

def prepare(out: Path) -> None:
    """Train and export the check's models into ``out/repository`` (needs ``.[dev]``)."""
    from rnnserve.export.exporter import export_checkpoint
    from rnnserve.train.config import PLAIN_TRAINING
    from rnnserve.train.synthetic import write_synthetic_dataset
    from rnnserve.train.trainer import TrainConfig, train

    out.mkdir(parents=True, exist_ok=True)
    repo = out / "repository"
    data = write_synthetic_dataset(out / "data.tsv", n=800, seed=0)
    specs = [("chk-lstm1", "lstm", 1, 32, 16), ("chk-lstm2", "lstm", 2, 32, 16),
             ("chk-gru1", "gru", 1, 32, 16), ("chk-gru2", "gru", 2, 32, 16),
             ("chk-bench", "lstm", 1, 256, 64)]
    for name, cell, layers, hidden, embed in specs:
        config = TrainConfig(cell=cell, data=str(data), out=out / "ckpt" / name,
                             embed_dim=embed, hidden=hidden, layers=layers, epochs=2,
                             batch_size=32, vocab_size=400, seed=0, progress=False, lr=1e-2,
                             **PLAIN_TRAINING)
        checkpoint = train(config).checkpoint_dir
        export_checkpoint(checkpoint, repository=repo, name=name, force=True)
        if name == "chk-lstm2":
            for precision in ("fp16", "int8"):
                export_checkpoint(checkpoint, repository=repo, name=f"chk-lstm2-{precision}",
                                  precision=precision, force=True)
    say(f"prepared {repo}")


# -- helpers ---------------------------------------------------------------------------------

def _metadata(repo: Path, name: str):
    from rnnserve.repository import RepositoryMetadata

    directory = repo / name / "1"
    return directory, RepositoryMetadata.model_validate_json(
        (directory / "metadata.json").read_text())


def _model(repo: Path, name: str, device: str, max_batch: int = 64, **settings):
    from rnnserve.server.runtime import OnnxModel
    from rnnserve.server.settings import ServerSettings

    directory, meta = _metadata(repo, name)
    return OnnxModel(directory / "model.onnx", meta, ServerSettings(device=device, **settings),
                     max_batch_size=max_batch), meta


def _batch(meta, rng, batch: int, steps: int):
    ids = rng.integers(1, meta.vocab_size, size=(batch, steps)).astype(np.int64)
    lengths = rng.integers(1, steps + 1, size=batch).astype(np.int64)
    lengths[0] = steps
    states = [rng.standard_normal((batch, *meta.state_shape)).astype(np.float32) * 0.5
              for _ in meta.state_names]
    return ids, lengths, states


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# -- sections ----------------------------------------------------------------------------------

def versions(gpu: str) -> None:
    import onnxruntime as ort
    from rnnserve.server.cuda_probe import probe_cuda

    section("versions")
    say(f"  python {platform.python_version()} on {platform.platform()}")
    say(f"  onnxruntime {ort.__version__} (built for CUDA {getattr(ort, 'cuda_version', '?')})"
        f", providers {ort.get_available_providers()}")
    report = probe_cuda(0)
    say(f"  probe: usable={report.usable} {report.fields()} -- {report.reason}")
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20, check=False).stdout.strip()
        say(f"  nvidia-smi: {smi or '(no output)'}")
    except (OSError, subprocess.TimeoutExpired) as exc:
        say(f"  nvidia-smi: not available ({exc})")
    if gpu == "cuda":
        check(report.usable, "CUDA probe passes")


def active_provider(repo: Path, gpu: str) -> None:
    from rnnserve.server.runtime import CPU, CUDA

    section("active provider")
    for name in FP32_MODELS:
        model, _ = _model(repo, name, gpu)
        want = CUDA if gpu == "cuda" else CPU
        check(model.provider == want, f"{name}: {model.provider}")


def placement(repo: Path, gpu: str) -> None:
    import onnxruntime as ort
    from rnnserve.server.runtime import CPU, CUDA, cuda_provider_options, session_options
    from rnnserve.server.settings import ServerSettings

    section("node placement and Memcpy nodes (ORT profile)")
    for name in ("chk-lstm2", "chk-gru1"):
        directory, meta = _metadata(repo, name)
        settings = ServerSettings(device=gpu)
        with tempfile.TemporaryDirectory() as tmp:
            options = session_options(settings)
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "profile")
            providers = [(CUDA, cuda_provider_options(settings)), CPU] if gpu == "cuda" \
                else [CPU]
            session = ort.InferenceSession(str(directory / "model.onnx"), options,
                                           providers=providers, enable_fallback=0)
            ids, lengths, states = _batch(meta, np.random.default_rng(0), 4, 8)
            feeds = {"input_ids": ids, "lengths": lengths, **dict(zip(meta.state_names,
                                                                      states, strict=True))}
            for _ in range(3):
                session.run(None, feeds)
            events = json.loads(Path(session.end_profiling()).read_text())
        nodes: dict[str, tuple[str, str]] = {}
        for event in events:
            args = event.get("args", {})
            if event.get("cat") == "Node" and "provider" in args:
                node = event["name"].removesuffix("_kernel_time")
                nodes[node] = (args.get("op_name", "?"), args["provider"])
        say(f"  {name}:")
        for node, (op, provider) in sorted(nodes.items()):
            say(f"    {node:32s} {op:22s} {provider}")
        memcpy = [n for n, (op, _) in nodes.items() if op.startswith("Memcpy")]
        say(f"    Memcpy nodes: {memcpy or 'none'}")
        if gpu == "cuda":
            rnn = [p for op, p in nodes.values() if op in ("LSTM", "GRU")]
            check(bool(rnn) and all(p == CUDA for p in rnn), f"{name}: RNN nodes on CUDA")


def parity(repo: Path, gpu: str) -> None:
    section("CPU vs device: logits and states (mixed lengths, random state)")
    for name in FP32_MODELS:
        cpu, meta = _model(repo, name, "cpu")
        for tf32 in (False, True):
            dev, _ = _model(repo, name, gpu, cuda_tf32=tf32)
            rng = np.random.default_rng(1)
            worst_logits = worst_state = 0.0
            for batch, steps in ((1, 7), (8, 33), (64, 120)):
                ids, lengths, states = _batch(meta, rng, batch, steps)
                a, sa = cpu.run(ids, lengths, states, want_state=True)
                b, sb = dev.run(ids, lengths, states, want_state=True)
                worst_logits = max(worst_logits, _max_diff(a, b))
                worst_state = max([worst_state, *(_max_diff(x, y) for x, y in zip(sa, sb,
                                                                                  strict=True))])
            what = (f"{name} tf32={'on' if tf32 else 'off'}: max |logit diff| "
                    f"{worst_logits:.2e}, max |state diff| {worst_state:.2e}")
            if tf32:
                say(f"  [info] {what}")
            else:
                check(worst_logits <= 1e-5 and worst_state <= 1e-5, what + " (<= 1e-5)")


def chunked_and_pool(repo: Path, gpu: str) -> None:
    from rnnserve.server.execution import BatchExecutor, Row
    from rnnserve.server.state_pool import StatePool

    section("chunked = whole on the device; device state pool vs host pool")
    for name in FP32_MODELS:
        dev, meta = _model(repo, name, gpu)
        rng = np.random.default_rng(2)
        ids, lengths, _ = _batch(meta, rng, 16, 96)
        whole, _ = dev.run(ids, lengths, None, want_state=False)
        state, logits = None, None
        for start in range(0, 96, 16):
            part = ids[:, start:start + 16]
            part_lengths = np.clip(lengths - start, 0, 16)
            live = part_lengths > 0
            if state is None:
                state = [np.zeros((16, *meta.state_shape), np.float32)
                         for _ in meta.state_names]
                logits = np.zeros_like(whole)
            out_logits, out_state = dev.run(part[live], part_lengths[live],
                                            [s[live] for s in state], want_state=True)
            logits[live] = out_logits
            for s, o in zip(state, out_state, strict=True):
                s[live] = o
        check(_max_diff(whole, logits) <= 1e-5,
              f"{name}: chunked (16) = whole, max diff {_max_diff(whole, logits):.2e}")

        # the same sequences through a host-pool executor (CPU) and a device-pool one
        results = []
        for device, mode in (("cpu", "host"), (gpu, "device")):
            model, _ = _model(repo, name, device, max_batch=8, state_pool=mode)
            pool = StatePool(len(meta.state_names), 32, meta.state_shape)
            executor = BatchExecutor(model, max_batch_size=8, chunk_length=8,
                                     pad_id=meta.pad_id, pool=pool)
            stream_rng = np.random.default_rng(3)
            answers = []
            for chunk in range(5):
                rows = [Row(stream_rng.integers(1, meta.vocab_size,
                                                size=int(stream_rng.integers(1, 20))),
                            None, slot=slot, fresh=chunk == 0) for slot in range(0, 16, 2)]
                final = np.zeros((len(rows), meta.num_labels), np.float32)
                pending = list(range(len(rows)))
                while pending:
                    result = executor.execute([rows[i] for i in pending])
                    for j, i in enumerate(pending):
                        final[i] = result.logits[j]
                    pending = [i for i in pending if rows[i].remaining > 0]
                answers.append(final)
            results.append(np.stack(answers))
        check(_max_diff(*results) <= 1e-5,
              f"{name}: device pool = host pool over 5 chunks x 8 sequences, max diff "
              f"{_max_diff(*results):.2e}")


def precisions(repo: Path, gpu: str) -> None:
    from rnnserve.server.runtime import CPU

    section("fp16 vs fp32 on the device; int8 placement")
    fp32, meta = _model(repo, "chk-lstm2", gpu)
    fp16, _ = _model(repo, "chk-lstm2-fp16", gpu, allow_unverified_fp16=True)
    rng = np.random.default_rng(4)
    worst, agree, total = 0.0, 0, 0
    for batch, steps in ((1, 16), (64, 64), (64, 256)):
        ids, lengths, _ = _batch(meta, rng, batch, steps)
        a, _ = fp32.run(ids, lengths, None, want_state=False)
        b, _ = fp16.run(ids, lengths, None, want_state=False)
        worst = max(worst, _max_diff(a, b))
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        total += batch
    say(f"  [info] fp16 ({fp16.provider}) vs fp32: max |logit diff| {worst:.2e}, argmax "
        f"agreement {agree}/{total}")
    int8, _ = _model(repo, "chk-lstm2-int8", gpu)
    check(int8.provider == CPU, f"int8 model runs on {int8.provider} "
          f"(pinned: {bool(int8.pinned) or gpu == 'cpu'})")


def _child(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def fallback(repo: Path) -> None:
    section("fallback with the GPU hidden (CUDA_VISIBLE_DEVICES=)")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    here = str(Path(__file__).parent)
    for device in ("cuda", "auto"):
        code = (f"import sys\nfrom pathlib import Path\nsys.path.insert(0, {here!r})\n"
                "from rnnserve.server.logs import configure_logging\n"
                "configure_logging('json', 'INFO')\n"
                "from gpu_check import _model\n"
                "try:\n"
                f"    m, _ = _model(Path({str(repo)!r}), 'chk-lstm1', {device!r})\n"
                "    print('provider', m.provider)\n"
                "except Exception as e:\n"
                "    print('refused', type(e).__name__, e)\n")
        proc = _child(code, env)
        out = proc.stdout.strip()
        say(f"  --device {device}: {out[:300]}")
        warnings = [line for line in proc.stderr.splitlines() if '"warning"' in line]
        for line in warnings[:3]:
            say(f"    {line[:300]}")
        if device == "cuda":
            check(out.startswith("refused RuntimeUnavailable"), "--device cuda refuses")
        else:
            check(out == "provider CPUExecutionProvider", "--device auto falls back to CPU")
        check("EP Error" not in proc.stdout + proc.stderr, f"{device}: no ORT banner")


def _start_server(repo: Path, device: str, instances: int, env: dict[str, str]):
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnserve.server", "--repository", str(repo), "--device", device,
         "--instances", str(instances), "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "-1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**env, "RNNSERVE_LOG_FORMAT": "json"})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if '"event": "ready"' in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, json.loads(line)["port"]
    proc.kill()
    raise RuntimeError(f"server on {device} did not become ready")


def _words(rng, low: int, high: int) -> str:
    return " ".join(rng.choice(VOCABULARY, size=int(rng.integers(low, high + 1))))


def two_instances(repo: Path, gpu: str, seconds: float) -> None:
    import grpc
    from rnnserve.protos import sentiment_pb2, sentiment_pb2_grpc

    section(f"{seconds:g} s of a two-instance {gpu} server under random shapes vs CPU")
    proc, port = _start_server(repo, gpu, 2, {**os.environ, "RNNSERVE_STATE_POOL": "device"})
    reference, port_cpu = _start_server(repo, "cpu", 1, dict(os.environ))
    counts = {"requests": 0, "streams": 0, "texts": 0, "mismatch": 0, "errors": 0}
    worst = [0.0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as a, \
                grpc.insecure_channel(f"127.0.0.1:{port_cpu}") as b:
            dev, cpu = sentiment_pb2_grpc.SentimentStub(a), sentiment_pb2_grpc.SentimentStub(b)
            while time.monotonic() < stop:
                model = str(rng.choice(FP32_MODELS))
                streaming = seed % 2 == 1          # half the clients hold sequences
                texts = [_words(rng, 1, int(rng.choice([8, 40, 300])))
                         for _ in range(int(rng.integers(1, 17)))]
                try:
                    if streaming:
                        def chunks(texts=texts, model=model):
                            return iter([sentiment_pb2.StreamClassifyRequest(
                                text=text, model=model, end=i == len(texts) - 1)
                                for i, text in enumerate(texts)])
                        got = [r.prediction for r in dev.StreamClassify(chunks(), timeout=60)]
                        want = [r.prediction for r in cpu.StreamClassify(chunks(), timeout=60)]
                    else:
                        request = sentiment_pb2.ClassifyRequest(model=model, texts=texts)
                        got = dev.Classify(request, timeout=60).predictions
                        want = cpu.Classify(request, timeout=60).predictions
                except grpc.RpcError:
                    with lock:
                        counts["errors"] += 1
                    continue
                diff = max(_max_diff(x.logits, y.logits)
                           for x, y in zip(got, want, strict=True))
                with lock:
                    counts["streams" if streaming else "requests"] += 1
                    counts["texts"] += len(texts)
                    counts["mismatch"] += diff > 1e-4
                    worst[0] = max(worst[0], diff)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for server in (proc, reference):
        server.terminate()
        server.wait(60)
    say(f"  {counts}, max |logit diff| {worst[0]:.2e}")
    check(counts["errors"] == 0 and counts["mismatch"] == 0 and counts["requests"] > 0
          and counts["streams"] > 0,
          "two instances answer texts and streams like CPU (1e-4), no errors")


def _timed(run: Callable[[], object], repeats: int = 20) -> float:
    run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return float(np.median(samples)) * 1e3


def bench(repo: Path, gpu: str, seconds: float) -> None:
    import grpc
    from rnnserve.protos import sentiment_pb2, sentiment_pb2_grpc

    section("bench: chk-bench (LSTM 1x256, embed 64) model latency, median ms")
    cpu, _ = _model(repo, "chk-bench", "cpu")
    dev, _ = _model(repo, "chk-bench", gpu)
    say(f"  {'B':>3} {'T':>4} {'CPU ms':>9} {gpu + ' ms':>9}")
    for batch in (1, 64):
        for steps in (16, 256):
            ids = np.ones((batch, steps), np.int64)
            lengths = np.full(batch, steps, np.int64)
            times = [_timed(lambda m=m, i=ids, n=lengths: m.run(i, n, None, want_state=False))
                     for m in (cpu, dev)]
            say(f"  {batch:>3} {steps:>4} {times[0]:>9.3f} {times[1]:>9.3f}")

    section("bench: one stream step (64 sequences x 16 tokens, chk-bench), median ms")
    from rnnserve.server.execution import BatchExecutor, Row
    from rnnserve.server.state_pool import StatePool

    _, meta = _metadata(repo, "chk-bench")
    for device, mode in (("cpu", "host"), (gpu, "host"), (gpu, "device")):
        model, _ = _model(repo, "chk-bench", device, state_pool=mode)
        pool = StatePool(len(meta.state_names), 128, meta.state_shape)
        executor = BatchExecutor(model, max_batch_size=64, chunk_length=16,
                                 pad_id=meta.pad_id, pool=pool)
        rng = np.random.default_rng(6)

        def one_step(executor=executor, rng=rng) -> None:
            executor.execute([Row(rng.integers(1, meta.vocab_size, size=16), None,
                                  slot=slot, fresh=False) for slot in range(0, 128, 2)])

        say(f"  {device:>4} {mode:>6} pool: {_timed(one_step, 30):.3f} ms")

    section(f"bench: server throughput, 64 clients x 1 text, {seconds:g} s per point")
    cores = os.cpu_count() or 1
    levels = sorted({min(cores, 2 ** k) for k in range(cores.bit_length() + 1)})
    for instances in levels:
        proc, port = _start_server(repo, gpu, instances, dict(os.environ))
        done = [0]
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def client(seed: int, port=port, done=done, lock=lock, stop=stop) -> None:
            rng = np.random.default_rng(seed)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = sentiment_pb2_grpc.SentimentStub(channel)
                while time.monotonic() < stop:
                    stub.Classify(sentiment_pb2.ClassifyRequest(
                        model="chk-bench", texts=[_words(rng, 5, 40)]), timeout=60)
                    with lock:
                        done[0] += 1

        threads = [threading.Thread(target=client, args=(s,)) for s in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        proc.terminate()
        proc.wait(60)
        say(f"  instances {instances:>2}: {done[0] / seconds:,.0f} texts/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("prepare", "check"))
    parser.add_argument("--dir", type=Path, default=Path("build/gpu-check"))
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="use CPU in place of CUDA (tests the script without a GPU)")
    parser.add_argument("--soak-seconds", type=float, default=30.0)
    parser.add_argument("--bench-seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.dir)
        return 0
    repo = args.dir / "repository"
    if not repo.is_dir():
        say(f"{repo} is missing: run `scripts/gpu-check.sh prepare` where .[dev] is installed "
            "and carry build/gpu-check to this machine")
        return 2
    gpu = "cpu" if args.cpu_smoke else "cuda"
    started = time.monotonic()
    versions(gpu)
    active_provider(repo, gpu)
    placement(repo, gpu)
    parity(repo, gpu)
    chunked_and_pool(repo, gpu)
    precisions(repo, gpu)
    if gpu == "cuda":
        fallback(repo)
    two_instances(repo, gpu, args.soak_seconds)
    if gpu == "cuda":
        bench(repo, gpu, args.bench_seconds)
    section(f"done in {time.monotonic() - started:.0f} s: "
            f"{'all checks passed' if not FAILURES else f'{len(FAILURES)} FAILED'}")
    for failure in FAILURES:
        say(f"  FAIL {failure}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    raise SystemExit(main())
