"""Unit-level invariants of the batching, sequence and configuration pieces."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from rnnserve.server.batcher import Scheduler
from rnnserve.server.engine import EngineOptions, warmup_batch_sizes
from rnnserve.server.errors import AlreadyExists, NotFound, ResourceExhausted
from rnnserve.server.execution import Row, softmax
from rnnserve.server.logs import JsonFormatter, KeyValueFormatter, log_event
from rnnserve.server.registry import served_versions
from rnnserve.server.sequences import SequenceStore
from rnnserve.server.settings import ServerSettings
from tritonclient.grpc import model_config_pb2

DOCS = Path(__file__).resolve().parents[2] / "docs"


class _Owner:
    abandoned = False


class _Executor:
    chunk_length = 16


def _scheduler(max_batch=4, queue=100):
    return Scheduler([_Executor()], max_batch_size=max_batch, max_queue_delay_s=0,
                     adaptive=True, max_queue_size=queue, telemetry=None, name="m/1")


def test_take_keeps_oldest_and_groups_by_length():
    async def scenario():
        scheduler = _scheduler(max_batch=4)
        lengths = [9, 1, 2, 15, 3, 10, 11, 1, 12]
        rows = [Row(np.ones(n, np.int64), _Owner()) for n in lengths]
        scheduler.admit(len(rows))
        for row in rows:
            scheduler.submit(row)
        first = scheduler._take()
        second = scheduler._take()
        return rows, first, second, list(scheduler._queue)

    rows, first, second, rest = asyncio.run(scenario())
    assert rows[0] in first and len(first) == 4
    assert sorted(r.ids.size for r in first) == [9, 10, 11, 12]      # neighbours of 9
    assert rows[1] in second                                          # next oldest
    assert sorted(r.ids.size for r in second) == [1, 1, 2, 3]
    assert [r.ids.size for r in rest] == [15]


def test_admission_is_bounded_and_released():
    async def scenario():
        scheduler = _scheduler(queue=3)
        scheduler.admit(2)
        with pytest.raises(ResourceExhausted):
            scheduler.admit(2)
        scheduler.release(2)
        scheduler.admit(3)
        return scheduler.admitted

    assert asyncio.run(scenario()) == 3


def test_sequence_store_slots_are_zeroed_reused_and_capped():
    store = SequenceStore(capacity=2, state_count=2, state_shape=(2, 3), idle_seconds=10)
    assert store.state_bytes == 2 * 2 * 3 * 4
    a = store.open("a")
    store.pool[0][a.slot] = 7.0
    store.pool[1][a.slot] = 7.0
    with pytest.raises(AlreadyExists):
        store.open("a")
    store.open("b")
    with pytest.raises(ResourceExhausted, match="2 sequences are open"):
        store.open("c")
    slot = a.slot
    a.busy = True                      # a chunk is running: the slot must not be reused
    store.close(a)
    with pytest.raises(ResourceExhausted):
        store.open("c")
    a.busy = False
    store.release(a)
    c = store.open("c")
    assert c.slot == slot and c.fresh
    assert not store.pool[0][slot].any() and not store.pool[1][slot].any()
    with pytest.raises(NotFound, match="was ended"):
        store.get("a")
    with pytest.raises(NotFound, match="never started"):
        store.get("zzz")


def test_sequence_store_expires_only_idle_sequences():
    store = SequenceStore(capacity=4, state_count=1, state_shape=(1, 1), idle_seconds=5)
    old, busy, fresh = store.open("old"), store.open("busy"), store.open("fresh")
    old.last_used = busy.last_used = 0.0
    busy.busy = True
    fresh.last_used = 100.0
    assert store.expire(now=101.0) == 1
    assert store.find("old") is None and store.find("busy") is busy
    with pytest.raises(NotFound, match="expired after 5 s idle"):
        store.get("old")


def test_softmax_rows_sum_to_one():
    logits = np.array([[1000.0, 0.0], [-3.0, 2.0]], dtype=np.float32)
    probabilities = softmax(logits.copy())
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert probabilities[0, 0] == pytest.approx(1.0)


def test_options_settings_override_config():
    config = model_config_pb2.ModelConfig(max_batch_size=64)
    config.sequence_batching.oldest.max_queue_delay_microseconds = 700
    config.sequence_batching.max_sequence_idle_microseconds = 5_000_000
    config.parameters["rnnserve.chunk_length"].string_value = "99"
    options = EngineOptions.resolve(config, ServerSettings())
    assert (options.max_batch_size, options.max_queue_delay_s, options.chunk_length,
            options.sequence_idle_seconds, options.instances) == (64, 0.0007, 99, 5.0, 1)
    options = EngineOptions.resolve(config, ServerSettings(
        max_batch_size=8, max_queue_delay_us=0, chunk_length=5, sequence_idle_seconds=2,
        instances=3))
    assert (options.max_batch_size, options.max_queue_delay_s, options.chunk_length,
            options.sequence_idle_seconds, options.instances) == (8, 0.0, 5, 2.0, 3)
    assert warmup_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert warmup_batch_sizes(6) == [1, 2, 4, 6]


def test_sessions_follow_workers_and_share_the_cpus(monkeypatch):
    """Without instances or an instance_group, a model gets one ORT session per worker;
    the default intra-op threads are the CPUs but one, divided among the sessions."""
    from rnnserve.server import runtime

    config = model_config_pb2.ModelConfig(max_batch_size=8)
    assert EngineOptions.resolve(config, ServerSettings(workers=3)).instances == 3
    assert EngineOptions.resolve(config, ServerSettings(workers=3, instances=1)).instances == 1
    config.instance_group.add(count=2)
    assert EngineOptions.resolve(config, ServerSettings(workers=3)).instances == 2
    monkeypatch.setattr(runtime, "available_cpus", lambda: 9)
    threads = [runtime.session_options(ServerSettings(), sessions).intra_op_num_threads
               for sessions in (1, 4, 16)]
    assert threads == [8, 2, 1]
    assert runtime.session_options(ServerSettings(intra_op_threads=3), 4).intra_op_num_threads \
        == 3


def test_version_policy():
    config = model_config_pb2.ModelConfig()
    assert served_versions(config, ["1", "2", "10"]) == ["10"]
    config.version_policy.all.SetInParent()
    assert served_versions(config, ["1", "2"]) == ["1", "2"]
    config.version_policy.specific.versions.extend([1])
    assert served_versions(config, ["1", "2"]) == ["1"]
    config.version_policy.latest.num_versions = 2
    assert served_versions(config, ["1", "2", "3"]) == ["2", "3"]


def test_settings_from_environment_and_flags(monkeypatch):
    monkeypatch.setenv("RNNSERVE_PORT", "9100")
    monkeypatch.setenv("RNNSERVE_DEVICE", "cpu")
    monkeypatch.setenv("RNNSERVE_MAX_BATCH_SIZE", "12")
    settings = ServerSettings()
    assert (settings.port, settings.device, settings.max_batch_size) == (9100, "cpu", 12)
    assert ServerSettings(port=9200).port == 9200                  # flags win
    monkeypatch.setenv("RNNSERVE_DEVICE", "gpu")
    with pytest.raises(ValueError):
        ServerSettings()


def test_every_setting_is_documented():
    text = (DOCS / "server.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.MULTILINE))
    missing = set(ServerSettings.model_fields) - documented
    assert not missing, f"docs/server.md lacks settings: {sorted(missing)}"


def test_log_lines_are_single_line_events():
    logger = logging.getLogger("rnnserve.test.logs")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    log_event(logger, "model_ready", model="m", note='two\nlines "quoted"')
    line = JsonFormatter().format(records[0])
    assert "\n" not in line
    assert json.loads(line)["note"] == 'two\nlines "quoted"'
    kv = KeyValueFormatter().format(records[0])
    assert "\n" not in kv and "event=model_ready" in kv and "model=m" in kv


def test_device_cuda_without_cuda_fails_clearly():
    from rnnserve.server.runtime import CUDA, RuntimeUnavailable, select_provider

    choice = select_provider("auto")
    if choice.provider == CUDA:
        pytest.skip("CUDA is usable on this machine")
    assert "running on CPU" in choice.reason
    with pytest.raises(RuntimeUnavailable, match="--device cuda"):
        select_provider("cuda")


def test_split_by_length_partitions_rows():
    from rnnserve.server.composition import CostModel, split_by_length

    steps = [3, 40, 4, 38, 5, 41, 3, 39]
    model = CostModel(call=1e-5, step=1e-6, row_step=1e-5)
    groups = split_by_length(steps, model)
    assert sorted(i for g in groups for i in g) == list(range(len(steps)))
    assert 2 <= len(groups) <= 4
    assert {max(steps[i] for i in g) for g in groups} != {41}      # short rows not padded
    assert split_by_length(steps, None) == [sorted(range(8), key=steps.__getitem__)]
    assert len(split_by_length([7] * 5, model)) == 1
    expensive_calls = CostModel(call=1.0, step=0.0, row_step=1e-6)
    assert len(split_by_length(steps, expensive_calls)) == 1


def test_nearest_lengths_keeps_the_oldest_and_its_length_neighbours():
    from rnnserve.server.composition import nearest_lengths

    steps = [10, 1, 50, 11, 9, 2, 12, 48]          # row 0 is the oldest
    chosen = nearest_lengths(steps, 4)
    assert 0 in chosen and len(chosen) == 4
    assert sorted(steps[i] for i in chosen) == [9, 10, 11, 12]
    # the oldest row goes even when it is the outlier
    assert 0 in nearest_lengths([100, 1, 1, 1, 1, 1], 3)


def test_metadata_json_of_earlier_exports_still_loads():
    """metadata.json as exporters wrote it before the shared Architecture (plus a key a newer
    exporter might add) loads; its architecture part is checked like a checkpoint's."""
    from rnnserve.architecture import Architecture
    from rnnserve.repository import RepositoryMetadata

    written = {"format_version": 1, "cell": "lstm", "vocab_size": 50, "embed_dim": 8,
               "hidden": 6, "layers": 2, "bidirectional": True, "num_labels": 2,
               "labels": ["negative", "positive"], "pad_id": 0, "precision": "fp16",
               "opset": 17, "metrics": {"val_accuracy": 0.8}, "validation": {},
               "source_checkpoint": "/c", "exported_at": "2026-01-01T00:00:00+00:00",
               "a_newer_field": 1}
    meta = RepositoryMetadata.model_validate_json(json.dumps(written))
    assert (meta.state_names, meta.state_shape, meta.state_bytes) == (
        ["state_h", "state_c"], (4, 6), 4 * 6 * 4 * 2)
    assert meta.architecture() == Architecture(
        cell="lstm", vocab_size=50, embed_dim=8, hidden=6, layers=2, bidirectional=True,
        num_labels=2, labels=["negative", "positive"])
    with pytest.raises(ValueError, match="labels has 1 entries but num_labels is 2"):
        RepositoryMetadata.model_validate_json(json.dumps({**written, "labels": ["only"]}))
