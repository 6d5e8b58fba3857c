"""Streaming load: many open ``StreamClassify`` sequences, chunk latency by stream position.

Two measurements, each bounded in chunks and seconds:

``open_streams``
    Open ``N`` streams (each sends its first chunk and waits for the answer), sample the
    server's RSS while all ``N`` are open (memory per open sequence = RSS delta / N), then
    keep every stream sending chunks closed-loop (one in flight per stream) until the chunk
    or time bound, then end them all and sample RSS again.

``positions``
    ``slots`` concurrent streams each run sequences of ``length`` chunks back to back; the
    first sequence of slot ``j`` is shortened so slots are out of phase, which interleaves
    early and late positions in time (noise hits both alike). Latency is reported per
    position window (``p±2``), e.g. 10 vs 1000.

Run by the suite as ``python -m rnnserve.bench.streams ...``; see ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import grpc
from rnnserve.bench.loadgen import CHANNEL_OPTIONS
from rnnserve.bench.report import emit_json
from rnnserve.bench.stats import summarize_latencies
from rnnserve.bench.workloads import STREAM_CLASSIFY

#: How many streams one channel (one HTTP/2 connection) carries at most.
STREAMS_PER_CHANNEL = 500


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size of process ``pid`` (None if unknown or gone)."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _describe(exc: Exception) -> str:
    """A short error label: the gRPC status name, else the exception text."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return f"{type(exc).__name__}: {exc}"


def make_chunks(sentences: list[str], words_per_chunk: int = 4) -> list[str]:
    """Whitespace-split chunks of the sentences, in order (the pool every stream cycles over)."""
    chunks = []
    for sentence in sentences:
        words = sentence.split()
        chunks.extend(
            " ".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)
        )
    return [c for c in chunks if c.strip()] or ["good movie"]


class _Stream:
    """One bidi StreamClassify call used step by step (write one chunk, read its answer)."""

    def __init__(self, channel: grpc.aio.Channel, model: str) -> None:
        from rnnserve.protos import sentiment_pb2

        self._pb = sentiment_pb2
        self._call = channel.stream_stream(
            STREAM_CLASSIFY,
            request_serializer=sentiment_pb2.StreamClassifyRequest.SerializeToString,
            response_deserializer=sentiment_pb2.StreamClassifyResponse.FromString,
        )()
        self.model = model
        self.sent = 0

    async def step(self, text: str, *, end: bool = False):
        request = self._pb.StreamClassifyRequest(text=text, end=end)
        if self.sent == 0:
            request.model = self.model
        await self._call.write(request)
        self.sent += 1
        response = await self._call.read()
        if response is grpc.aio.EOF:
            raise RuntimeError("stream closed by the server before answering")
        return response

    async def close(self) -> None:
        try:
            await self._call.done_writing()
            while await self._call.read() is not grpc.aio.EOF:
                pass
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            pass

    def cancel(self) -> None:
        self._call.cancel()


def _channels(target: str, streams: int) -> list[grpc.aio.Channel]:
    count = max(1, math.ceil(streams / STREAMS_PER_CHANNEL))
    return [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(count)]


async def open_streams(
    target: str, model: str, chunks: list[str], streams: int, *, max_chunks: int,
    duration: float, server_pid: int | None = None, open_timeout: float = 120.0,
) -> dict:
    """Hold ``streams`` sequences open, measure RSS per sequence, then drive chunks."""
    channels = _channels(target, streams)
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
        rss_before = rss_bytes(server_pid)
        handles = [_Stream(channels[i % len(channels)], model) for i in range(streams)]
        errors: list[str] = []
        n = len(chunks)

        async def first(i: int, stream: _Stream) -> None:
            try:
                await stream.step(chunks[i % n])
            except (grpc.aio.AioRpcError, RuntimeError) as exc:
                errors.append(_describe(exc))

        t_open = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(first(i, s) for i, s in enumerate(handles))), timeout=open_timeout
        )
        open_seconds = time.perf_counter() - t_open
        await asyncio.sleep(0.3)
        rss_open = rss_bytes(server_pid)
        opened = streams - len(errors)

        latencies: list[float] = []
        tokens = 0
        budget = [max_chunks]
        perf = time.perf_counter
        deadline = perf() + duration

        async def drive(i: int, stream: _Stream) -> None:
            nonlocal tokens
            k = i
            while budget[0] > 0 and perf() < deadline:
                budget[0] -= 1
                k += streams
                t0 = perf()
                try:
                    response = await stream.step(chunks[k % n])
                except (grpc.aio.AioRpcError, RuntimeError) as exc:
                    errors.append(_describe(exc))
                    return
                latencies.append(perf() - t0)
                tokens += response.prediction.tokens

        cpu0, t0 = time.process_time(), perf()
        await asyncio.gather(*(drive(i, s) for i, s in enumerate(handles) if s.sent))
        elapsed, cpu = perf() - t0, time.process_time() - cpu0
        await asyncio.gather(*(s.close() for s in handles))
        await asyncio.sleep(0.5)
        rss_closed = rss_bytes(server_pid)
    finally:
        for channel in channels:
            await channel.close()
    delta = (rss_open - rss_before) if rss_open is not None and rss_before is not None else None
    return {
        "streams": streams,
        "opened": opened,
        "open_seconds": open_seconds,
        "chunks": len(latencies),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "seconds": elapsed,
        "chunks_per_s": len(latencies) / elapsed if elapsed > 0 else math.nan,
        "tokens_per_s": tokens / elapsed if elapsed > 0 else math.nan,
        "client_cpu_us_per_chunk": cpu / len(latencies) * 1e6 if latencies else math.nan,
        "server_rss_before": rss_before,
        "server_rss_open": rss_open,
        "server_rss_closed": rss_closed,
        "rss_bytes_per_open_sequence": delta / opened if delta is not None and opened else None,
        **summarize_latencies(latencies),
    }


async def positions(
    target: str, model: str, chunks: list[str], *, slots: int, length: int,
    probe: tuple[int, ...], max_chunks: int, duration: float, window: int = 2,
) -> dict:
    """Chunk latency by stream position (windows ``p±window``) over staggered sequences."""
    channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    by_position: dict[int, list[float]] = defaultdict(list)
    wanted = {p + d: p for p in probe for d in range(-window, window + 1) if p + d >= 1}
    budget = [max_chunks]
    perf = time.perf_counter
    deadline = perf() + duration
    n = len(chunks)
    sequences = [0]
    errors: list[str] = []

    async def slot(j: int) -> None:
        first_length = max(1, (j * length) // slots)
        current = first_length
        k = j * 7919
        while budget[0] > 0 and perf() < deadline:
            stream = _Stream(channel, model)
            try:
                for position in range(1, current + 1):
                    if budget[0] <= 0 or perf() >= deadline:
                        break
                    budget[0] -= 1
                    k += 1
                    t0 = perf()
                    await stream.step(chunks[k % n], end=position == current)
                    if position in wanted:
                        by_position[wanted[position]].append(perf() - t0)
            except (grpc.aio.AioRpcError, RuntimeError) as exc:
                errors.append(_describe(exc))
                stream.cancel()
                return
            await stream.close()
            sequences[0] += 1
            current = length

    try:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        t0 = perf()
        await asyncio.gather(*(slot(j) for j in range(slots)))
        elapsed = perf() - t0
    finally:
        await channel.close()
    return {
        "slots": slots,
        "length": length,
        "window": window,
        "sequences_completed": sequences[0],
        "chunks": max_chunks - max(budget[0], 0),
        "seconds": elapsed,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "by_position": {
            str(p): {"samples": len(by_position[p]), **summarize_latencies(by_position[p])}
            for p in probe
        },
    }


def _kserve_step(model: str, sequence_id: int, text: str, *, start: bool, end: bool) -> bytes:
    from rnnserve.bench.workloads import kserve_text_request
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest.FromString(kserve_text_request(model, text))
    request.parameters["sequence_id"].int64_param = sequence_id
    if start:
        request.parameters["sequence_start"].bool_param = True
    if end:
        request.parameters["sequence_end"].bool_param = True
    return request.SerializeToString()


async def kserve_sequences(
    target: str, model: str, chunks: list[str], sequences: int, *, server_pid: int | None,
    in_flight: int = 64, first_id: int = 1_000_000,
) -> dict:
    """Open ``sequences`` KServe sequences (``<model>-stream``, one chunk each, no RPC left
    open), sample RSS, then end them: the memory of state + bookkeeping alone."""
    from rnnserve.bench.workloads import KSERVE_INFER

    name = model + "-stream"
    channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    call = channel.unary_unary(KSERVE_INFER)
    gate = asyncio.Semaphore(in_flight)
    errors: list[str] = []
    n = len(chunks)

    async def send(sequence_id: int, *, start: bool, end: bool) -> bool:
        async with gate:
            try:
                await call(_kserve_step(name, sequence_id, chunks[sequence_id % n], start=start,
                                        end=end), timeout=60)
                return True
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{exc.code().name}: {exc.details()}")
                return False

    try:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        warm = range(first_id - 100, first_id - 36)  # warm code paths and allocator first
        await asyncio.gather(*(send(i, start=True, end=False) for i in warm))
        await asyncio.gather(*(send(i, start=False, end=True) for i in warm))
        await asyncio.sleep(0.3)
        rss_before = rss_bytes(server_pid)
        ids = range(first_id, first_id + sequences)
        t0 = time.perf_counter()
        opened = sum(await asyncio.gather(*(send(i, start=True, end=False) for i in ids)))
        open_seconds = time.perf_counter() - t0
        await asyncio.sleep(0.3)
        rss_open = rss_bytes(server_pid)
        await asyncio.gather(*(send(i, start=False, end=True) for i in ids))
        await asyncio.sleep(0.3)
        rss_ended = rss_bytes(server_pid)
    finally:
        await channel.close()
    known = None not in (rss_before, rss_open) and opened
    return {
        "model": name,
        "sequences": sequences,
        "opened": opened,
        "open_seconds": open_seconds,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "server_rss_before": rss_before,
        "server_rss_open": rss_open,
        "server_rss_ended": rss_ended,
        "bytes_per_sequence": (rss_open - rss_before) / opened if known else None,
        "rss_released_bytes_per_sequence": (
            (rss_open - rss_ended) / opened if known and rss_ended is not None else None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens-json", type=Path, required=True)
    parser.add_argument("--streams", default="10,100,1000,10000")
    parser.add_argument("--max-chunks", type=int, default=20000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--positions", default="10,1000", help="probe positions")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--position-chunks", type=int, default=20000)
    parser.add_argument("--position-duration", type=float, default=40.0)
    parser.add_argument("--kserve-sequences", type=int, default=0,
                        help="also hold this many KServe sequences open (memory per sequence)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    corpus = json.loads(args.tokens_json.read_text(encoding="utf-8"))
    chunks = make_chunks(corpus["sentences"])
    probe = tuple(int(p) for p in args.positions.split(",") if p)

    async def run() -> dict:
        result: dict = {"chunk_pool": len(chunks)}
        if args.kserve_sequences:  # first, on a fresh server: RSS deltas are cleanest
            result["kserve_sequences"] = await kserve_sequences(
                args.target, args.model, chunks, args.kserve_sequences,
                server_pid=args.server_pid)
        result["levels"] = []
        for n in (int(s) for s in args.streams.split(",") if s):
            result["levels"].append(await open_streams(
                args.target, args.model, chunks, n, max_chunks=args.max_chunks,
                duration=args.duration, server_pid=args.server_pid))
        if probe:
            result["positions"] = await positions(
                args.target, args.model, chunks, slots=args.slots, length=max(probe) + 3,
                probe=probe, max_chunks=args.position_chunks, duration=args.position_duration)
        return result

    emit_json(asyncio.run(run()), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
