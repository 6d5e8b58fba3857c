"""The device state pool (server/state_pool.py), driven on the CPU device through the same
code path CUDA uses: ORT values, gather/scatter graphs, IOBinding of the model's state.

A server with ``state_pool=device`` must answer exactly what the host pool and the offline
reference answer: streams, long texts run in chunks (carried stateless state), many
sequences batched together, and sequences moved to and from a host-pool server.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as triton
from offline import GRU, LSTM, random_text
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from sequence_support import step
from serving import start_server

TOLERANCE = 1e-5
CHUNK = 4            # tokens per ORT call: most texts and chunks take several steps


def test_hand_encoded_graphs_are_valid_onnx():
    import onnx
    from rnnserve.server.state_pool import gather_graph, scatter_graph

    for graph in (gather_graph(3, 5), scatter_graph(3, 5), gather_graph(3, 5, 2),
                  scatter_graph(3, 5, 2)):
        model = onnx.load_from_string(graph)
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == 17


def _cpu_model(tiny_repository, **settings):
    from rnnserve.server.runtime import OnnxModel
    from rnnserve.server.settings import ServerSettings

    from rnnserve.repository import RepositoryMetadata

    directory = tiny_repository / "tiny-lstm" / "1"
    meta = RepositoryMetadata.model_validate_json((directory / "metadata.json").read_text())
    return OnnxModel(directory / "model.onnx", meta,
                     ServerSettings(device="cpu", **settings), max_batch_size=4), meta


def test_pool_slots_gather_and_scatter_in_place(tiny_repository):
    from rnnserve.server.state_pool import DeviceTensor, StatePool

    model, meta = _cpu_model(tiny_repository, state_pool="device")
    pool = StatePool(2, 5, meta.state_shape)
    pool[0][3] = 2.0
    host_values = pool.host
    device = pool.place(model, "device")
    assert device is not None and pool.host is None and device.zero_row == 5
    assert (host_values[0][3] == 2.0).all()
    np.testing.assert_array_equal(pool[0][3], np.full(meta.state_shape, 2.0, np.float32))
    rng = np.random.default_rng(0)
    value = rng.standard_normal(meta.state_shape).astype(np.float32)
    pool[1][4] = value
    np.testing.assert_array_equal(pool[1][4], value)
    assert not pool[1][3].any() and not pool[0][4].any()

    # gather rows (with the zero row) into a batch tensor, then scatter a batch back
    batch = [DeviceTensor((4, *meta.state_shape), "cpu", 0) for _ in range(2)]
    device.gather(device.tensors, np.array([4, 5, 3], np.int64), batch)
    got = device.gather_to_host(batch, np.array([0, 1, 2], np.int64))
    zero = np.zeros_like(value)
    np.testing.assert_array_equal(got[0], np.stack([zero, zero, np.full_like(value, 2.0)]))
    np.testing.assert_array_equal(got[1], np.stack([value, zero, zero]))
    # all tensors at once: slot 0 <- batch row 2, slot 1 <- batch row 0
    device.scatter(device.tensors, np.array([0, 1], np.int64), batch,
                   np.array([2, 0], np.int64))
    np.testing.assert_array_equal(pool[0][0], np.full_like(value, 2.0))
    np.testing.assert_array_equal(pool[1][1], value)
    assert not pool[1][0].any() and not pool[0][1].any() and (pool[0][3] == 2.0).all()
    assert not any(a.any() for a in device.gather_to_host(device.tensors,
                                                          np.array([5], np.int64)))
    # a binding never reaches past a tensor's rows
    with pytest.raises(ValueError, match="cannot bind 5 rows of a 4-row device tensor"):
        device.gather(device.tensors, np.arange(5, dtype=np.int64), batch)
    # placement is decided once, by the first executor
    assert pool.place(model, "host") is device
    host_pool = StatePool(1, 2, meta.state_shape)
    assert host_pool.place(model, "auto") is None and host_pool.placed == "host"   # CPU
    assert host_pool.place(model, "device") is None and host_pool.host is not None


def test_run_bound_equals_run(tiny_repository):
    """The model's device-bound run gives the same logits and state as plain feeds."""
    from rnnserve.server.state_pool import DeviceTensor

    model, meta = _cpu_model(tiny_repository, state_pool="device")
    rng = np.random.default_rng(1)
    ids = rng.integers(1, meta.vocab_size, size=(3, 6)).astype(np.int64)
    lengths = np.array([6, 2, 4], np.int64)
    states = [rng.standard_normal((3, *meta.state_shape)).astype(np.float32)
              for _ in meta.state_names]
    logits, out = model.run(ids, lengths, states, want_state=True)
    inputs = [DeviceTensor((4, *meta.state_shape), "cpu", 0) for _ in meta.state_names]
    outputs = [DeviceTensor((4, *meta.state_shape), "cpu", 0) for _ in meta.state_names]
    for tensor, array in zip(inputs, states, strict=True):
        tensor.value.update_inplace(np.concatenate([array, np.zeros((1, *meta.state_shape),
                                                                    np.float32)]))
    bound = model.run_bound(ids, lengths, inputs, outputs)
    np.testing.assert_array_equal(bound, logits)
    for tensor, array in zip(outputs, out, strict=True):
        np.testing.assert_array_equal(tensor.value.numpy()[:3], array)


@pytest.fixture(scope="module")
def device_server(tiny_repository):
    with start_server(tiny_repository, state_pool="device", chunk_length=CHUNK,
                      max_batch_size=8, max_queue_delay_us=2000) as handle:
        yield handle


def test_engines_really_use_the_device_pool(device_server):
    for name in (LSTM, GRU):
        engine = device_server.registry.get(name)
        assert engine.store.pool.device is not None
        assert engine.store.pool.placed == "CPUExecutionProvider"


@pytest.mark.parametrize("model", [LSTM, GRU])
def test_streams_match_the_offline_reference(device_server, offline, model):
    rng = np.random.default_rng(7)
    streams = [[random_text(rng, 1, 11) for _ in range(5)] for _ in range(6)]

    def run(chunks):
        with device_server.channel() as channel:
            stub = sentiment_pb2_grpc.SentimentStub(channel)
            requests = [pb.StreamClassifyRequest(text=chunk, model=model,
                                                 end=i == len(chunks) - 1)
                        for i, chunk in enumerate(chunks)]
            return [r.prediction.logits for r in stub.StreamClassify(iter(requests),
                                                                     timeout=60)]

    with ThreadPoolExecutor(len(streams)) as pool:      # batched together, mixed lengths
        results = list(pool.map(run, streams))
    for chunks, got in zip(streams, results, strict=True):
        np.testing.assert_allclose(np.array(got), np.stack(offline[model].stream(chunks)),
                                   atol=TOLERANCE, rtol=0)


def test_long_texts_carry_state_between_steps(device_server, offline):
    rng = np.random.default_rng(3)
    texts = [random_text(rng, 1, 30) for _ in range(24)]
    with device_server.channel() as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        reply = stub.Classify(pb.ClassifyRequest(texts=texts, model=LSTM), timeout=60)
    got = np.array([p.logits for p in reply.predictions])
    want = np.stack([offline[LSTM].logits(t) for t in texts])
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("model", [LSTM, GRU])
def test_sequences_move_between_device_and_host_pools(device_server, server, stub, offline,
                                                      model):
    chunks = ["the film was", "really great fun and", "but the ending", "was awful"]
    expected = offline[model].stream(chunks)
    dev, host = (triton.InferenceServerClient(s.address) for s in (device_server, server))
    with device_server.channel() as channel:
        dev_stub = sentiment_pb2_grpc.SentimentStub(channel)
        step(dev, model, chunks[0], 7301, start=True)
        step(dev, model, chunks[1], 7301)
        exported = dev_stub.ExportSequence(pb.ExportSequenceRequest(
            model=model, sequence=pb.SequenceRef(sequence_id=7301), release=True), timeout=10)
        stub.ImportSequence(pb.ImportSequenceRequest(
            model=f"{model}-stream", sequence=pb.SequenceRef(sequence_id=7301),
            state=exported.state), timeout=10)
        np.testing.assert_allclose(step(host, model, chunks[2], 7301), expected[2],
                                   atol=TOLERANCE, rtol=0)
        back = stub.ExportSequence(pb.ExportSequenceRequest(
            model=model, sequence=pb.SequenceRef(sequence_id=7301), release=True), timeout=10)
        dev_stub.ImportSequence(pb.ImportSequenceRequest(
            model=f"{model}-stream", sequence=pb.SequenceRef(sequence_id=7301),
            state=back.state), timeout=10)
        np.testing.assert_allclose(step(dev, model, chunks[3], 7301, end=True), expected[3],
                                   atol=TOLERANCE, rtol=0)


def test_every_binding_mode_equals_plain_feeds(tiny_repository):
    """The CUDA path's IOBinding (zero state bound to a device buffer, given state copied
    in, unwanted output state left in a scratch buffer), driven on the CPU device, answers
    exactly what plain feeds answer, in each of the modes warm-up runs."""
    from rnnserve.server.runtime import _DeviceBuffers

    model, meta = _cpu_model(tiny_repository)
    bound = _DeviceBuffers(model)
    rng = np.random.default_rng(5)
    ids = rng.integers(1, meta.vocab_size, size=(3, 5)).astype(np.int64)
    lengths = np.array([5, 1, 3], np.int64)
    given = [rng.standard_normal((3, *meta.state_shape)).astype(np.float32)
             for _ in meta.state_names]
    for states in (None, given):
        for want_state in (True, False):
            logits, out = model.run(ids, lengths, states, want_state=want_state)
            got, got_out = bound.run(ids, lengths, states, want_state=want_state)
            np.testing.assert_array_equal(got, logits)
            assert len(got_out) == len(out) == (len(meta.state_names) if want_state else 0)
            for a, b in zip(got_out, out, strict=True):
                np.testing.assert_array_equal(a, b)
