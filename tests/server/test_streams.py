"""StreamClassify and sequences: pipelined concurrent streams match offline prefixes;
end, reset, cancel, expiry, cap, bidirectional refusal."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from offline import GRU, LSTM, random_text
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from rnnserve.server.engine import StreamKey
from rnnserve.server.errors import AlreadyExists, NotFound, ResourceExhausted
from serving import start_server

TOLERANCE = 1e-5


def _requests(chunks, model, *, end=True, first_extra=None):
    for index, chunk in enumerate(chunks):
        request = pb.StreamClassifyRequest(text=chunk, end=end and index == len(chunks) - 1)
        if index == 0:
            request.model = model
            for key, value in (first_extra or {}).items():
                setattr(request, key, value)
        yield request


def _expected_prefixes(reference, chunks):
    ids: list[int] = []
    out = []
    for chunk in chunks:
        ids += reference.ids(chunk)
        out.append((reference.logits_of_ids(ids), len(ids)))
    return out


def test_100_concurrent_pipelined_streams_match_offline_prefixes(stub, offline, server):
    rng = np.random.default_rng(5)
    streams = []
    for i in range(100):
        model = LSTM if i % 2 else GRU
        chunks = [random_text(rng, 1, 12) for _ in range(int(rng.integers(1, 9)))]
        # every request is yielded at once: chunks are pipelined ahead of the answers
        call = stub.StreamClassify(_requests(chunks, model), timeout=60)
        streams.append((call, chunks, model))
    sequence_ids = set()
    for call, chunks, model in streams:
        responses = list(call)
        expected = _expected_prefixes(offline[model], chunks)
        assert len(responses) == len(chunks)
        for index, (response, (logits, total)) in enumerate(zip(responses, expected,
                                                               strict=True)):
            np.testing.assert_allclose(response.prediction.logits, logits, atol=TOLERANCE,
                                       rtol=0)
            assert response.chunk_index == index + 1
            assert response.total_tokens == total
            assert response.end == (index == len(chunks) - 1)
            assert bool(response.model) == (index == 0)
        sequence_ids.add(responses[0].sequence_id)
    assert len(sequence_ids) == 100
    for name in (LSTM, GRU):
        assert len(server.registry.get(name).store) == 0     # all ended and freed


def test_long_chunk_runs_in_steps(tiny_repository, offline):
    rng = np.random.default_rng(6)
    chunks = [random_text(rng, 40, 40), random_text(rng, 3, 3), random_text(rng, 25, 25)]
    with start_server(tiny_repository, chunk_length=8) as server:
        stub = sentiment_pb2_grpc.SentimentStub(server.channel())
        responses = list(stub.StreamClassify(_requests(chunks, LSTM), timeout=30))
    for response, (logits, _) in zip(responses, _expected_prefixes(offline[LSTM], chunks),
                                     strict=True):
        np.testing.assert_allclose(response.prediction.logits, logits, atol=TOLERANCE)


def test_empty_final_chunk_repeats_last_prediction(stub, offline):
    responses = list(stub.StreamClassify(iter([
        pb.StreamClassifyRequest(text="great movie", model=LSTM),
        pb.StreamClassifyRequest(text="", end=True)])))
    assert len(responses) == 2
    assert list(responses[1].prediction.logits) == list(responses[0].prediction.logits)
    assert responses[1].prediction.tokens == 0 and responses[1].end


def test_half_close_without_end_frees_the_sequence(stub, server):
    responses = list(stub.StreamClassify(iter([
        pb.StreamClassifyRequest(text="great movie", model=GRU)])))
    assert len(responses) == 1 and not responses[0].end
    _wait_until(lambda: len(server.registry.get(GRU).store) == 0)


def test_reset_starts_from_zero_state(stub, offline):
    responses = list(stub.StreamClassify(iter([
        pb.StreamClassifyRequest(text="awful boring plot", model=LSTM),
        pb.StreamClassifyRequest(text="great fun", reset=True),
        pb.StreamClassifyRequest(text="loved it", end=True)])))
    expected = _expected_prefixes(offline[LSTM], ["great fun", "loved it"])
    assert [r.chunk_index for r in responses] == [1, 1, 2]
    assert responses[1].model == LSTM     # a reset restates the model
    for response, (logits, total) in zip(responses[1:], expected, strict=True):
        np.testing.assert_allclose(response.prediction.logits, logits, atol=TOLERANCE)
        assert response.total_tokens == total


def test_chunk_after_end_is_failed_precondition(stub):
    call = stub.StreamClassify(iter([
        pb.StreamClassifyRequest(text="great", model=LSTM, end=True),
        pb.StreamClassifyRequest(text="more")]))
    responses = []
    with pytest.raises(grpc.RpcError) as info:
        for response in call:
            responses.append(response)  # noqa: PERF402 - keep answers before the error
    assert len(responses) == 1 and responses[0].end         # earlier answers are delivered
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "after the chunk marked end" in info.value.details()


def test_cancelled_stream_frees_its_sequence(stub, server):
    store = server.registry.get(LSTM).store
    release = threading.Event()

    def requests():
        yield pb.StreamClassifyRequest(text="great movie", model=LSTM)
        release.wait(10)

    call = stub.StreamClassify(requests())
    first = next(call)
    assert first.chunk_index == 1
    key = StreamKey(("stream", int(first.sequence_id.removeprefix("stream-"))))
    state = store.find(key)
    assert state is not None and state.slot >= 0
    slot = state.slot
    call.cancel()
    release.set()
    _wait_until(lambda: store.find(key) is None and state.slot == -1)
    assert store._free.count(slot) == 1                 # the slot is free, exactly once


def test_bidirectional_model_refuses_streaming(bidi_repository):
    with start_server(bidi_repository) as server:
        stub = sentiment_pb2_grpc.SentimentStub(server.channel())
        assert stub.Classify(pb.ClassifyRequest(texts=["great fun"])).predictions
        meta = stub.GetModelMetadata(pb.GetModelMetadataRequest())
        assert meta.bidirectional and not meta.streaming
        with pytest.raises(grpc.RpcError) as info:
            list(stub.StreamClassify(iter([pb.StreamClassifyRequest(text="great")])))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "bidirectional" in info.value.details()


# -- engine-level sequence semantics (the API KServe uses) ---------------------------------


def test_sequence_ids_start_continue_end_restart(server, offline):
    engine = server.registry.get(LSTM)
    # Ids no other test of the shared session server uses (perf_analyzer's sequence mode
    # numbers its sequences from 1 and ends them, so small ids may be "ended" already).
    ours, unknown = 970041, 970042

    async def scenario():
        first = await engine.stream_step(ours, "awful plot", start=True, end=False, api="kserve")
        with pytest.raises(AlreadyExists):
            await engine.stream_step(ours, "again", start=True, end=False)
        with pytest.raises(NotFound, match="never started"):
            await engine.stream_step(unknown, "x", start=False, end=False)
        with pytest.raises(NotFound):
            await engine.stream_step(str(ours), "x", start=False, end=False)   # ids compare exactly
        restarted = await engine.stream_step(ours, "great fun", start=True, end=False,
                                              restart=True)
        last = await engine.stream_step(ours, "loved it", start=False, end=True)
        with pytest.raises(NotFound, match="was ended"):
            await engine.stream_step(ours, "more", start=False, end=False)
        engine.end_sequence(ours)                       # idempotent
        return first, restarted, last

    first, restarted, last = server.call(scenario())
    np.testing.assert_allclose(first.logits, offline[LSTM].logits("awful plot"), atol=1e-5)
    np.testing.assert_allclose(restarted.logits, offline[LSTM].logits("great fun"), atol=1e-5)
    np.testing.assert_allclose(last.logits, offline[LSTM].logits("great fun loved it"),
                               atol=1e-5)


def test_pipelined_submits_are_answered_in_order(server, offline):
    engine = server.registry.get(GRU)
    chunks = ["good", "bad awful", "fine", "not very good", "loved"]

    async def scenario():
        futures = [engine.submit_step("p", chunk, start=i == 0, end=i == len(chunks) - 1)
                   for i, chunk in enumerate(chunks)]
        order = []
        for index, future in enumerate(futures):
            future.add_done_callback(lambda _f, index=index: order.append(index))
        results = [await future for future in futures]
        return results, order

    results, order = server.call(scenario())
    assert order == sorted(order)
    for result, (logits, _) in zip(results, _expected_prefixes(offline[GRU], chunks),
                                   strict=True):
        np.testing.assert_allclose(result.logits, logits, atol=1e-5)


def test_expiry_cap_and_eviction(tiny_repository):
    with start_server(tiny_repository, max_sequences=3, sequence_idle_seconds=1.0) as server:
        engine = server.registry.get(LSTM)

        async def fill(prefix):
            for i in range(3):
                await engine.stream_step(f"{prefix}{i}", "good", start=True, end=False)

        server.call(fill("a"))
        with pytest.raises(ResourceExhausted, match="3 sequences are open"):
            server.call(engine.stream_step("a3", "good", start=True, end=False))
        _wait_until(lambda: len(engine.store) == 0, timeout=5)   # idle > 1 s: all expire
        with pytest.raises(NotFound, match="expired after 1 s idle"):
            server.call(engine.stream_step("a0", "good", start=False, end=False))
        server.call(fill("b"))                          # slots were reclaimed

    with start_server(tiny_repository, max_sequences=2, evict_idle_sequences=True) as server:
        engine = server.registry.get(LSTM)

        async def scenario():
            await engine.stream_step("x", "good", start=True, end=False)
            await engine.stream_step("y", "good", start=True, end=False)
            await engine.stream_step("x", "fine", start=False, end=False)   # y is now LRU
            await engine.stream_step("z", "good", start=True, end=False)    # evicts y
            with pytest.raises(NotFound, match="evicted"):
                await engine.stream_step("y", "good", start=False, end=False)
            return sorted(engine.store._open)

        assert server.call(scenario()) == ["x", "z"]


def test_new_sequence_never_sees_old_state(server, offline):
    """A reused slot is zeroed: a sequence started after another ended on the same slot
    gets exactly the fresh-state logits."""
    engine = server.registry.get(LSTM)

    async def scenario():
        await engine.stream_step("old", "awful awful boring hated", start=True, end=True)
        return await engine.stream_step("new", "great", start=True, end=True)

    result = server.call(scenario())
    np.testing.assert_allclose(result.logits, offline[LSTM].logits("great"), atol=1e-6)


def _wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_refused_chunk_is_counted_as_a_failure(stub, server):
    """A chunk refused before it is queued (here: an empty first chunk) still reaches the
    statistics that KServe ModelStatistics and Prometheus report."""
    telemetry = server.registry.get(GRU).telemetry
    before = telemetry.statistics().inference_stats.fail.count
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamClassify(iter([pb.StreamClassifyRequest(text="  ", model=GRU)])))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert telemetry.statistics().inference_stats.fail.count == before + 1
