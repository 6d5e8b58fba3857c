"""Sequence state export/import: a sequence moves between servers (v2 ids and text streams)
and continues exactly where it stopped; damaged, forged, foreign and misaddressed snapshots
get precise statuses; a drained stream hands its state to the client in a trailer."""

from __future__ import annotations

import queue
import struct
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from offline import GRU, LSTM
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from rnnserve.server.errors import FailedPrecondition
from rnnserve.server.snapshot import SnapshotCodec
from rnnserve.server.text_api import STATE_TRAILER
from sequence_support import step as _step
from serving import start_server

TOLERANCE = 1e-5
CHUNKS = ["the film was", "really great fun", "but the ending", "was awful"]
KEY_OLD = "old-state-key-0123456789"
KEY_NEW = "new-state-key-0123456789"


def _triton(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address)


def _ref(**sequence) -> pb.SequenceRef:
    return pb.SequenceRef(**sequence)


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


@pytest.fixture(scope="module")
def second(tiny_repository):
    """Another replica serving the same repository (same model files)."""
    with start_server(tiny_repository) as handle:
        yield handle


@pytest.fixture(scope="module")
def second_stub(second):
    with second.channel() as channel:
        yield sentiment_pb2_grpc.SentimentStub(channel)


# -- v2 sequences -------------------------------------------------------------------------


@pytest.mark.parametrize("model", [LSTM, GRU])
def test_v2_sequence_moves_to_another_replica(server, second, stub, second_stub, offline,
                                              model):
    a, b = _triton(server), _triton(second)
    expected = offline[model].stream(CHUNKS)
    _step(a, model, CHUNKS[0], 9001, start=True)
    _step(a, model, CHUNKS[1], 9001)
    exported = stub.ExportSequence(pb.ExportSequenceRequest(
        model=model, sequence=_ref(sequence_id=9001), release=True), timeout=10)
    assert exported.released and exported.model == model and exported.version == "1"
    assert exported.chunks == 2
    assert exported.total_tokens == sum(len(offline[model].ids(c)) for c in CHUNKS[:2])
    # released: gone here, and the message says why
    with pytest.raises(triton.InferenceServerException) as error:
        _step(a, model, CHUNKS[2], 9001)
    assert error.value.status() == "StatusCode.NOT_FOUND"
    assert "exported" in error.value.message()

    imported = second_stub.ImportSequence(pb.ImportSequenceRequest(
        model=f"{model}-stream", sequence=_ref(sequence_id=9001), state=exported.state),
        timeout=10)
    assert (imported.model, imported.chunks, imported.total_tokens) == (
        model, 2, exported.total_tokens)
    np.testing.assert_allclose(imported.prediction.logits, expected[1], atol=TOLERANCE, rtol=0)
    got = [_step(b, model, CHUNKS[2], 9001), _step(b, model, CHUNKS[3], 9001, end=True)]
    np.testing.assert_allclose(np.stack(got), np.stack(expected[2:]), atol=TOLERANCE, rtol=0)


def test_export_without_release_copies_and_names_work(server, stub, offline):
    """A snapshot taken without release leaves the sequence running; importing it under a
    string id on the same server gives an independent copy with the same future."""
    a = _triton(server)
    _step(a, LSTM, CHUNKS[0], "copy-src", start=True)
    exported = stub.ExportSequence(pb.ExportSequenceRequest(
        model=LSTM, sequence=_ref(sequence_name="copy-src")), timeout=10)
    assert not exported.released
    stub.ImportSequence(pb.ImportSequenceRequest(
        sequence=_ref(sequence_name="copy-dst"), state=exported.state), timeout=10)
    expected = offline[LSTM].stream(CHUNKS[:2])[1]
    for sid in ("copy-src", "copy-dst"):
        np.testing.assert_allclose(_step(a, LSTM, CHUNKS[1], sid, end=True), expected,
                                   atol=TOLERANCE, rtol=0)
    # int 5 and "5" stay different ids: the string one was never opened
    code, details = _code(lambda: stub.ExportSequence(pb.ExportSequenceRequest(
        model=LSTM, sequence=_ref(sequence_name="9001")), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND and "never started" in details


# -- text streams ---------------------------------------------------------------------------


def test_stream_export_state_then_resume_elsewhere(stub, second_stub, offline):
    ref = offline[GRU]
    requests = [pb.StreamClassifyRequest(text=CHUNKS[0], model=GRU),
                pb.StreamClassifyRequest(text=CHUNKS[1], export_state=True)]
    first = list(stub.StreamClassify(iter(requests), timeout=30))
    assert not first[0].state and first[1].state
    snapshot = first[1].state

    # resume with no text: the restored running prediction, same index and totals
    resumed = list(second_stub.StreamClassify(iter([
        pb.StreamClassifyRequest(resume_state=snapshot),
        pb.StreamClassifyRequest(text=CHUNKS[2]),
        pb.StreamClassifyRequest(text=CHUNKS[3], end=True, export_state=True)]), timeout=30))
    expected = ref.stream(CHUNKS)
    assert [r.chunk_index for r in resumed] == [2, 3, 4]
    assert resumed[0].total_tokens == first[1].total_tokens
    assert resumed[0].model == GRU and list(resumed[0].labels)
    assert resumed[-1].end and resumed[-1].state
    assert resumed[-1].total_tokens == sum(len(ref.ids(c)) for c in CHUNKS)
    np.testing.assert_allclose([r.prediction.logits for r in resumed], expected[1:],
                               atol=TOLERANCE, rtol=0)

    # resume with text on the first message; and a stream snapshot continues as a v2 id
    with_text = list(second_stub.StreamClassify(iter([
        pb.StreamClassifyRequest(resume_state=snapshot, model=GRU, text=CHUNKS[2],
                                 end=True)]), timeout=30))
    np.testing.assert_allclose(with_text[0].prediction.logits, expected[2], atol=TOLERANCE,
                               rtol=0)
    assert with_text[0].chunk_index == 3
    second_stub.ImportSequence(pb.ImportSequenceRequest(
        sequence=_ref(sequence_id=4242), state=snapshot), timeout=10)


def test_stream_resume_errors(stub, offline):
    requests = [pb.StreamClassifyRequest(text=CHUNKS[0], model=LSTM, export_state=True)]
    snapshot = next(iter(stub.StreamClassify(iter(requests), timeout=30))).state
    code, details = _code(lambda: list(stub.StreamClassify(iter([
        pb.StreamClassifyRequest(text=CHUNKS[0], model=LSTM),
        pb.StreamClassifyRequest(text=CHUNKS[1], resume_state=snapshot)]), timeout=30)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "first message" in details
    code, details = _code(lambda: list(stub.StreamClassify(iter([
        pb.StreamClassifyRequest(text=CHUNKS[0], model=GRU, resume_state=snapshot)]),
        timeout=30)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "model file" in details
    code, details = _code(lambda: list(stub.StreamClassify(iter([
        pb.StreamClassifyRequest(text="x", resume_state=b"garbage")]), timeout=30)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# -- refusals ---------------------------------------------------------------------------------


def _lstm_snapshot(stub, server, sid) -> bytes:
    _step(_triton(server), LSTM, CHUNKS[0], sid, start=True)
    return stub.ExportSequence(pb.ExportSequenceRequest(
        model=LSTM, sequence=_ref(sequence_id=sid), release=True), timeout=10).state


def _flip(blob: bytes, index: int) -> bytes:
    data = bytearray(blob)
    data[index] ^= 0x01
    return bytes(data)


def test_damaged_and_misaddressed_snapshots_are_refused(stub, server):
    blob = _lstm_snapshot(stub, server, 7100)

    def import_(state, sequence=None, model=""):
        return _code(lambda: stub.ImportSequence(pb.ImportSequenceRequest(
            model=model, sequence=sequence or _ref(sequence_id=7101), state=state),
            timeout=10))

    header_len = struct.unpack_from(">I", blob, 6)[0]
    cases = {
        "empty": (b"", "too short"),
        "truncated": (blob[:-1], "checksum"),
        "bad magic": (b"XXXX" + blob[4:], "bad magic"),
        "future format": (blob[:4] + b"\x09" + blob[5:], "format 9"),
        "header bit": (_flip(blob, 10 + header_len // 2), "checksum"),
        "state bit": (_flip(blob, 10 + header_len + 3), "checksum"),
        "tag bit": (_flip(blob, len(blob) - 1), "checksum"),
        "unknown tag kind": (blob[:5] + b"\x07" + blob[6:], "tag kind 7"),
    }
    for name, (state, needle) in cases.items():
        code, details = import_(state)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, name
        assert needle in details, (name, details)

    # a well-formed digest over NaN state is still refused
    codec = SnapshotCodec()
    snap = codec.decode(blob)
    nan = tuple(np.full_like(a, np.nan) for a in snap.states)
    code, details = import_(codec.encode(snap.header, nan))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in details

    # another model's file, an open id, an unknown model, no id at all
    code, details = import_(blob, model=GRU)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "model file" in details
    stub.ImportSequence(pb.ImportSequenceRequest(sequence=_ref(sequence_id=7102), state=blob),
                        timeout=10)
    code, _ = import_(blob, sequence=_ref(sequence_id=7102))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    _step(_triton(server), LSTM, CHUNKS[1], 7102, end=True)   # the shared server stays clean
    code, _ = import_(blob, model="nope")
    assert code == grpc.StatusCode.NOT_FOUND
    for ref in (pb.SequenceRef(), _ref(sequence_id=0), _ref(sequence_name="")):
        code, details = import_(blob, sequence=ref)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "name the sequence" in details
    code, details = _code(lambda: stub.ExportSequence(pb.ExportSequenceRequest(
        model=LSTM, sequence=_ref(sequence_id=7100)), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND and "exported" in details


def test_export_refuses_a_sequence_with_chunks_in_flight(server):
    engine = server.registry.get(LSTM)

    async def scenario():
        future = engine.submit_step(7200, "the film was great", start=True)
        try:
            engine.export_sequence(7200)
        except FailedPrecondition as error:
            refused = error.message
        else:
            refused = ""
        await future
        blob, state = engine.export_sequence(7200, release=True)
        return refused, len(blob), state.chunks

    refused, size, chunks = server.call(scenario())
    assert "in flight" in refused and size > 0 and chunks == 1


def test_shared_server_is_left_without_open_sequences(server):
    for name in (LSTM, GRU):
        assert len(server.registry.get(name).store) == 0


# -- state keys ---------------------------------------------------------------------------------


def test_state_keys_sign_verify_and_rotate(tiny_repository, stub, server):
    unsigned = _lstm_snapshot(stub, server, 7300)
    with (start_server(tiny_repository, state_key=KEY_OLD) as old,
          start_server(tiny_repository, state_key=f"{KEY_NEW},{KEY_OLD}") as rotated,
          old.channel() as old_channel, rotated.channel() as rotated_channel):
        old_stub = sentiment_pb2_grpc.SentimentStub(old_channel)
        rotated_stub = sentiment_pb2_grpc.SentimentStub(rotated_channel)

        def import_(target, state, sid):
            return target.ImportSequence(pb.ImportSequenceRequest(
                sequence=_ref(sequence_id=sid), state=state), timeout=10)

        code, details = _code(lambda: import_(old_stub, unsigned, 1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not signed" in details
        signed_old = _lstm_snapshot(old_stub, old, 7301)
        code, details = _code(lambda: import_(stub, signed_old, 2))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "STATE_KEY" in details
        import_(rotated_stub, signed_old, 3)          # old key still verifies
        signed_new = _lstm_snapshot(rotated_stub, rotated, 7302)
        code, details = _code(lambda: import_(old_stub, signed_new, 4))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "integrity" in details


def test_short_state_key_fails_start_up(tiny_repository):
    with pytest.raises(ValueError, match="at least 16"), start_server(tiny_repository,
                                                                       state_key="short"):
        pass


# -- drain ------------------------------------------------------------------------------------


def test_drained_stream_ends_with_its_state_and_resumes_elsewhere(tiny_repository, stub,
                                                                   offline):
    requests: queue.Queue = queue.Queue()

    def feed():
        while (item := requests.get()) is not None:
            yield item

    with start_server(tiny_repository) as doomed, doomed.channel() as channel:
        call = sentiment_pb2_grpc.SentimentStub(channel).StreamClassify(feed(), timeout=60)
        requests.put(pb.StreamClassifyRequest(text=CHUNKS[0], model=LSTM))
        requests.put(pb.StreamClassifyRequest(text=CHUNKS[1]))
        answered = [next(call), next(call)]
        stopper = threading.Thread(target=doomed.stop)
        stopper.start()
        with pytest.raises(grpc.RpcError) as error:
            next(call)
        requests.put(None)
        stopper.join(timeout=60)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert STATE_TRAILER in error.value.details()
    trailer = dict(error.value.trailing_metadata())[STATE_TRAILER]
    resumed = list(stub.StreamClassify(iter([
        pb.StreamClassifyRequest(resume_state=trailer, text=CHUNKS[2]),
        pb.StreamClassifyRequest(text=CHUNKS[3], end=True)]), timeout=30))
    expected = offline[LSTM].stream(CHUNKS)
    np.testing.assert_allclose([r.prediction.logits for r in answered + resumed], expected,
                               atol=TOLERANCE, rtol=0)
    assert [r.chunk_index for r in answered + resumed] == [1, 2, 3, 4]


def test_a_stream_caught_by_a_drain_before_its_first_message_gets_its_state_back(
        tiny_repository, stub, offline):
    """Streams already open (their handlers waiting for the first message) when the drain
    begins end like those that arrive during it: UNAVAILABLE with the state their first
    message brought, never without it (the documented client would then give up)."""
    first = list(stub.StreamClassify(iter([
        pb.StreamClassifyRequest(text=CHUNKS[0], model=LSTM, export_state=True)]), timeout=30))
    state = first[0].state
    openings = {"resume": pb.StreamClassifyRequest(resume_state=state, text=CHUNKS[1]),
                "new": pb.StreamClassifyRequest(text=CHUNKS[0], model=LSTM)}
    with start_server(tiny_repository) as draining, draining.channel() as channel:
        doomed = sentiment_pb2_grpc.SentimentStub(channel)
        feeds = {name: queue.Queue() for name in openings}
        calls = {name: doomed.StreamClassify(iter(feed.get, None), timeout=30)
                 for name, feed in feeds.items()}
        deadline = time.monotonic() + 10           # both handlers run, waiting for a message
        while draining.run_sync(lambda: draining.server.drain.open_streams) < len(calls):
            assert time.monotonic() < deadline, "the streams never reached their handler"
            time.sleep(0.01)
        draining.run_sync(draining.server.drain.begin)
        refused = {}
        for name, call in calls.items():
            feeds[name].put(openings[name])
            feeds[name].put(None)
            with pytest.raises(grpc.RpcError) as error:
                list(call)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE, name
            assert STATE_TRAILER in error.value.details(), name
            refused[name] = dict(error.value.trailing_metadata())[STATE_TRAILER]
    _assert_given_back(refused, first, stub, offline)


def _assert_given_back(refused: dict, first: list, stub, offline) -> None:
    """The refused streams got back the state they brought (``first``'s exported state for
    "resume", nothing for "new"), and the resumed one continues exactly."""
    assert refused == {"resume": first[0].state, "new": b""}
    resumed = list(stub.StreamClassify(iter([
        pb.StreamClassifyRequest(resume_state=refused["resume"], text=CHUNKS[1], end=True)]),
        timeout=30))
    np.testing.assert_allclose([r.prediction.logits for r in first + resumed],
                               offline[LSTM].stream(CHUNKS[:2]), atol=TOLERANCE, rtol=0)


def test_a_draining_server_turns_new_streams_away_with_the_state_they_brought(
        tiny_repository, stub, offline):
    """While a drain ends the open streams the port still takes calls; a stream opened then
    is refused with UNAVAILABLE and, as its trailer, the state it came with (empty for a new
    sequence), so the documented client resends it elsewhere unchanged."""
    first = list(stub.StreamClassify(iter([
        pb.StreamClassifyRequest(text=CHUNKS[0], model=LSTM, export_state=True)]), timeout=30))
    state = first[0].state
    assert state
    with start_server(tiny_repository) as draining, draining.channel() as channel:
        draining.run_sync(draining.server.drain.begin)      # what a shutdown does first
        doomed = sentiment_pb2_grpc.SentimentStub(channel)
        refused = {}
        for name, request in (
                ("resume", pb.StreamClassifyRequest(resume_state=state, text=CHUNKS[1])),
                ("new", pb.StreamClassifyRequest(text=CHUNKS[0], model=LSTM))):
            with pytest.raises(grpc.RpcError) as error:
                list(doomed.StreamClassify(iter([request]), timeout=30))
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE, name
            assert STATE_TRAILER in error.value.details(), name
            refused[name] = dict(error.value.trailing_metadata())[STATE_TRAILER]
        # Unary calls are still answered until the port closes.
        assert doomed.Classify(pb.ClassifyRequest(texts=[CHUNKS[0]], model=LSTM),
                               timeout=30).predictions
    _assert_given_back(refused, first, stub, offline)
