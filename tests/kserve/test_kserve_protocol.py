"""KServe v2 health, metadata, ModelConfig, RepositoryIndex, statistics and UNIMPLEMENTED."""

from __future__ import annotations

import grpc
import pytest
from kserve_support import GRU, LSTM, SENTENCES, text_input
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException


def test_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    for name in (LSTM, f"{LSTM}-stream", GRU, f"{GRU}-stream"):
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready(LSTM, "7")


def test_server_metadata(client):
    metadata = client.get_server_metadata()
    assert metadata.name == "rnnserve" and metadata.version
    assert {"classification", "sequence", "statistics"} <= set(metadata.extensions)


@pytest.mark.parametrize("name", [LSTM, f"{LSTM}-stream"])
def test_model_metadata(client, name):
    metadata = client.get_model_metadata(name)
    assert metadata.name == name and list(metadata.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("TEXT", "BYTES", [-1, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("PROBABILITIES", "FP32", [-1, 2]), ("LOGITS", "FP32", [-1, 2]),
        ("LABEL", "BYTES", [-1, 1])]


def test_model_config_stateless_and_stateful(client, kserve_server):
    engine = kserve_server.registry.get(LSTM)
    stateless = client.get_model_config(LSTM).config
    stateful = client.get_model_config(f"{LSTM}-stream").config
    for config, name in ((stateless, LSTM), (stateful, f"{LSTM}-stream")):
        assert config.name == name and config.backend == "rnnserve" and not config.platform
        assert config.max_batch_size == engine.options.max_batch_size
        assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
            ("TEXT", model_config_pb2.TYPE_STRING, [1])]
        assert [t.name for t in config.output] == ["PROBABILITIES", "LOGITS", "LABEL"]
        assert config.parameters["rnnserve.cell"].string_value == "lstm"
    assert stateless.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert stateless.dynamic_batching.max_queue_delay_microseconds == round(
        engine.options.max_queue_delay_s * 1e6)
    assert stateful.WhichOneof("scheduling_choice") == "sequence_batching"
    assert not stateful.sequence_batching.state  # ONNX state tensors are internal
    assert stateful.sequence_batching.max_sequence_idle_microseconds == round(
        engine.options.sequence_idle_seconds * 1e6)
    assert stateful.parameters["rnnserve.kserve.flavour"].string_value == "stateful"


def test_metadata_of_unknown_model_is_not_found(kstub):
    for call, message in (
        (kstub.ModelMetadata, service_pb2.ModelMetadataRequest(name="nope")),
        (kstub.ModelConfig, service_pb2.ModelConfigRequest(name="nope")),
        (kstub.ModelStatistics, service_pb2.ModelStatisticsRequest(name="nope")),
        (kstub.ModelConfig, service_pb2.ModelConfigRequest(name=LSTM, version="9")),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call(message, timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'nope'" in error.value.details() or "version 9" in error.value.details()


def test_repository_index(client):
    index = client.get_model_repository_index()
    rows = {(m.name, m.version, m.state) for m in index.models}
    assert rows == {(n, "1", "READY") for n in (GRU, f"{GRU}-stream", LSTM, f"{LSTM}-stream")}


def _stats(client, name):
    (stats,) = client.get_inference_statistics(name).model_stats
    return stats


def test_statistics_count_every_request(client):
    before = _stats(client, LSTM)
    batch = 3
    for _ in range(4):
        client.infer(LSTM, [text_input(SENTENCES[:batch])])
    after = _stats(client, LSTM)
    assert after.name == LSTM and after.version == "1"
    infer, prior = after.inference_stats, before.inference_stats
    assert infer.success.count - prior.success.count == 4
    assert after.inference_count - before.inference_count == 4 * batch
    executions = after.execution_count - before.execution_count
    assert 1 <= executions <= 4 * batch
    assert infer.success.ns > prior.success.ns
    counts = {phase: getattr(infer, phase).count - getattr(prior, phase).count
              for phase in ("queue", "compute_input", "compute_infer", "compute_output")}
    # perf_analyzer requires equal compute counts; here every row waits once in the queue.
    assert len(set(counts.values())) == 1 and counts["queue"] == 4 * batch
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(infer, phase).ns >= getattr(prior, phase).ns
    assert sum(b.compute_infer.count for b in after.batch_stats) == after.execution_count


def test_statistics_count_failures(client):
    before = _stats(client, LSTM).inference_stats.fail.count
    with pytest.raises(InferenceServerException):
        client.infer(LSTM, [text_input(["fine"])], sequence_id=5, sequence_start=True)
    assert _stats(client, LSTM).inference_stats.fail.count == before + 1


def test_statistics_of_all_models_and_versions(client):
    stats = client.get_inference_statistics().model_stats
    assert {(s.name, s.version) for s in stats} == {
        (n, "1") for n in (GRU, f"{GRU}-stream", LSTM, f"{LSTM}-stream")}
    (one,) = client.get_inference_statistics(f"{GRU}-stream", "1").model_stats
    assert one.name == f"{GRU}-stream"


@pytest.mark.parametrize("rpc, message", [
    ("RepositoryModelLoad", service_pb2.RepositoryModelLoadRequest(model_name=LSTM)),
    ("RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(model_name=LSTM)),
])
def test_load_and_unload_need_explicit_model_control(kstub, rpc, message):
    """The shared server runs with the default --model-control none: its models stay."""
    with pytest.raises(grpc.RpcError) as error:
        getattr(kstub, rpc)(message, timeout=10)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--model-control explicit" in error.value.details()


@pytest.mark.parametrize("rpc, message", [
    ("SystemSharedMemoryStatus", service_pb2.SystemSharedMemoryStatusRequest()),
    ("CudaSharedMemoryRegister", service_pb2.CudaSharedMemoryRegisterRequest()),
    ("TraceSetting", service_pb2.TraceSettingRequest()),
    ("LogSettings", service_pb2.LogSettingsRequest()),
])
def test_other_rpcs_are_unimplemented(kstub, rpc, message):
    with pytest.raises(grpc.RpcError) as error:
        getattr(kstub, rpc)(message, timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert rpc in error.value.details() and "rnnserve" in error.value.details()
