"""Closed-loop async gRPC load generator (text API and KServe v2), with latency percentiles.

``N`` workers each keep exactly one request in flight (closed loop, concurrency ``N``) until a
fixed request count or a time bound is reached, whichever comes first. Requests are
serialized once before the run and sent as bytes through a generic ``unary_unary`` call, and
responses are kept as bytes and checked after the run, so the client spends its CPU on gRPC
itself, not protobuf. The client's own CPU time per request is recorded: on two cores it is
part of the picture.

Run in its own process (pinned with ``taskset`` when the suite measures pinned)::

    python -m rnnserve.bench.loadgen --target 127.0.0.1:8001 --api kserve --model m \
        --concurrency 1,4,16 --count 2000 --duration 10 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from rnnserve.bench.procstat import group_cpu_seconds
from rnnserve.bench.report import emit_json
from rnnserve.bench.stats import summarize_latencies

#: gRPC options for benchmark channels: no message-size surprises, no reconnect backoff.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 2**20),
    ("grpc.max_send_message_length", 64 * 2**20),
    ("grpc.initial_reconnect_backoff_ms", 100),
]


@dataclass
class UnaryWorkload:
    """Pre-serialized requests for one unary method, and how to check a response."""

    api: str
    method: str
    requests: list[bytes]
    tokens: list[int]
    #: Raises on a malformed/unexpected response (called after the run, on every response
    #: kept); returns the number of texts it answered.
    check: Callable[[bytes], int] = field(default=lambda _: 1)

    def __post_init__(self) -> None:
        if not self.requests or len(self.requests) != len(self.tokens):
            raise ValueError("a workload needs requests, and one token count per request")


async def closed_loop(
    channel: grpc.aio.Channel,
    workload: UnaryWorkload,
    concurrency: int,
    *,
    count: int,
    duration: float,
    offset: int = 0,
    timeout: float = 60.0,
    keep_responses: int = 64,
) -> dict:
    """Run ``concurrency`` workers until ``count`` requests are sent or ``duration`` passes.

    Returns counts, throughput (requests/s and tokens/s), latency percentiles, client CPU.
    """
    call = channel.unary_unary(workload.method)
    n = len(workload.requests)
    indices = itertools.count(offset)
    limit = offset + count
    latencies: list[float] = []
    tokens = 0
    errors: Counter[str] = Counter()
    error_samples: list[str] = []
    kept: list[bytes] = []
    perf = time.perf_counter
    deadline = perf() + duration

    async def worker() -> None:
        nonlocal tokens
        while True:
            i = next(indices)
            if i >= limit or perf() >= deadline:
                return
            request = workload.requests[i % n]
            t0 = perf()
            try:
                response = await call(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                if len(error_samples) < 5:
                    error_samples.append(f"{exc.code().name}: {exc.details()}")
                continue
            latencies.append(perf() - t0)
            tokens += workload.tokens[i % n]
            if len(kept) < keep_responses:
                kept.append(response)

    cpu0, t_start = time.process_time(), perf()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = perf() - t_start, time.process_time() - cpu0
    answered = sum(workload.check(r) for r in kept)
    done = len(latencies)
    return {
        "api": workload.api,
        "concurrency": concurrency,
        "requests": done,
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "error_samples": error_samples,
        "checked_responses": len(kept),
        "checked_texts": answered,
        "seconds": elapsed,
        "throughput_rps": done / elapsed if elapsed > 0 else math.nan,
        "tokens_per_s": tokens / elapsed if elapsed > 0 else math.nan,
        "client_cpu_s": cpu,
        "client_cpu_us_per_request": cpu / done * 1e6 if done else math.nan,
        **summarize_latencies(latencies),
    }


async def run_levels(
    target: str,
    workload: UnaryWorkload,
    levels: list[int],
    *,
    count: int,
    duration: float,
    warmup: int,
    channels: int = 1,
    server_pgid: int | None = None,
) -> list[dict]:
    """One closed-loop run per concurrency level, each preceded by a short warm-up.

    With ``server_pgid`` the server's CPU seconds during each measured window are recorded.
    """
    opened = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(channels)]
    try:
        for channel in opened:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
        results = []
        offset = 0
        for level in levels:
            per_channel = _split(level, channels)
            if warmup:
                await _gather_channels(opened, workload, per_channel, count=max(warmup, level * 2),
                                       duration=max(1.0, duration / 5), offset=offset)
            cpu0 = group_cpu_seconds(server_pgid)
            parts = await _gather_channels(opened, workload, per_channel, count=count,
                                           duration=duration, offset=offset)
            cpu1 = group_cpu_seconds(server_pgid)
            result = _merge(parts, level)
            if cpu0 is not None and cpu1 is not None:
                result["server_cpu_s"] = cpu1 - cpu0
                result["server_cpu_us_per_request"] = (
                    (cpu1 - cpu0) / result["requests"] * 1e6 if result["requests"] else math.nan
                )
            results.append(result)
            offset += count
        return results
    finally:
        for channel in opened:
            await channel.close()


def _split(level: int, channels: int) -> list[int]:
    """Spread ``level`` workers over channels as evenly as possible (zeros dropped later)."""
    return [level // channels + (1 if i < level % channels else 0) for i in range(channels)]


async def _gather_channels(opened, workload, per_channel, *, count, duration, offset):
    total = sum(per_channel)
    runs = [
        closed_loop(ch, workload, c, count=max(1, round(count * c / total)), duration=duration,
                    offset=offset + i * count)
        for i, (ch, c) in enumerate(zip(opened, per_channel, strict=True)) if c
    ]
    return await asyncio.gather(*runs)


def _merge(parts: list[dict], level: int) -> dict:
    """Combine per-channel runs (they ran at the same time) into one result."""
    if len(parts) == 1:
        return parts[0]
    seconds = max(p["seconds"] for p in parts)
    done = sum(p["requests"] for p in parts)
    merged = dict(parts[0])
    merged.update(
        concurrency=level, requests=done, seconds=seconds,
        errors=sum(p["errors"] for p in parts),
        throughput_rps=done / seconds, tokens_per_s=sum(p["tokens_per_s"] * p["seconds"]
                                                        for p in parts) / seconds,
        client_cpu_s=sum(p["client_cpu_s"] for p in parts),
    )
    merged["client_cpu_us_per_request"] = merged["client_cpu_s"] / done * 1e6 if done else math.nan
    # Percentiles of a merge are approximated by the request-weighted mean of the parts.
    for key in [k for k in parts[0] if k.endswith("_ms")]:
        merged[key] = sum(p[key] * p["requests"] for p in parts) / max(done, 1)
    return merged


def build_workload(api: str, model: str, sentences: list[str], tokens: list[int], **kw) -> UnaryWorkload:
    """The workload for ``api`` (``kserve`` or ``text``), one sentence per request."""
    if api == "kserve":
        from rnnserve.bench.workloads import kserve_text_workload

        return kserve_text_workload(model, sentences, tokens, **kw)
    if api == "text":
        from rnnserve.bench.workloads import text_api_workload

        return text_api_workload(model, sentences, tokens, **kw)
    raise ValueError(f"unknown api {api!r}: use kserve or text")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of the gRPC server")
    parser.add_argument("--api", choices=("kserve", "text"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens-json", type=Path, required=True,
                        help="JSON {sentences: [...], tokens: [...]} (the suite writes it)")
    parser.add_argument("--concurrency", default="1,4,16,64,256")
    parser.add_argument("--count", type=int, default=2000, help="requests per level (max)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level (max)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--input-name", default=None, help="KServe BYTES input name")
    parser.add_argument("--server-pgid", type=int, default=None,
                        help="process group of the server, to record its CPU time")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    corpus = json.loads(args.tokens_json.read_text(encoding="utf-8"))
    kw = {"input_name": args.input_name} if args.input_name and args.api == "kserve" else {}
    workload = build_workload(args.api, args.model, corpus["sentences"], corpus["tokens"], **kw)
    levels = [int(c) for c in args.concurrency.split(",") if c]
    results = asyncio.run(run_levels(args.target, workload, levels, count=args.count,
                                     duration=args.duration, warmup=args.warmup,
                                     channels=args.channels, server_pgid=args.server_pgid))
    emit_json(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
