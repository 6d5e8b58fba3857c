"""Live model repository: versions load and unload while a real server serves real clients.

Two different tiny LSTMs (same inputs and outputs, different weights) are versions 1 and 2
of one model ``live``; every answer names the version that gave it (``model_version``) and
is compared with the offline ORT reference of *that* version, so an answer from the wrong
version or a sequence continued on another version's state cannot pass.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from offline import Offline, random_text
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import OWN_CONNECTION, start_server
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

MODEL = "live"
STREAM = f"{MODEL}-stream"
ATOL = 1e-4
#: Generous bound for "eventually" (a poll interval, a load with warm-up); never a timing
#: assertion: the tests only fail when the state is never reached.
EVENTUALLY = 90.0


@pytest.fixture(scope="module")
def second_lstm(tmp_path_factory, tiny_dataset):
    """Another tiny LSTM with the same shape as the session's (other seed: other weights)."""
    from rnnserve.train.config import PLAIN_TRAINING
    from rnnserve.train.trainer import TrainConfig, train

    config = TrainConfig(cell="lstm", data=str(tiny_dataset),
                         out=tmp_path_factory.mktemp("second") / "lstm", embed_dim=16,
                         hidden=24, layers=2, epochs=1, batch_size=32, vocab_size=400, seed=7,
                         progress=False, num_threads=1, lr=1e-2,
                         **PLAIN_TRAINING)
    return train(config).checkpoint_dir


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_checkpoints, second_lstm):
    """A repository holding live/1 (session LSTM), live/2 (second LSTM) and gru/1."""
    from rnnserve.export.exporter import export_checkpoint

    repo = tmp_path_factory.mktemp("live-sources")
    export_checkpoint(tiny_checkpoints["lstm"], repository=repo, name=MODEL, version=1)
    export_checkpoint(second_lstm, repository=repo, name=MODEL, version=2)
    export_checkpoint(tiny_checkpoints["gru"], repository=repo, name="gru", version=1)
    return repo


@pytest.fixture(scope="module")
def reference(sources):
    return {version: Offline(sources, MODEL, version) for version in ("1", "2")}


def _repository(tmp_path: Path, sources: Path) -> Path:
    """A served repository holding only live/1 (and live's config.pbtxt)."""
    repo = tmp_path / "repo"
    (repo / MODEL).mkdir(parents=True)
    shutil.copy(sources / MODEL / "config.pbtxt", repo / MODEL / "config.pbtxt")
    shutil.copytree(sources / MODEL / "1", repo / MODEL / "1")
    return repo


def _place(source: Path, target: Path) -> None:
    """Copy a version directory in atomically (staged beside it, then renamed)."""
    staging = target.parent / f".staging-{target.name}"
    shutil.copytree(source, staging)
    staging.rename(target)


def _index(client) -> dict[str, tuple[str, str]]:
    return {m.version: (m.state, m.reason) for m in client.get_model_repository_index().models
            if m.name == MODEL}


def _eventually(what: str, check, timeout: float = EVENTUALLY):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def _text_tensor(texts: list[str]) -> triton.InferInput:
    tensor = triton.InferInput("TEXT", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t] for t in texts], dtype=object))
    return tensor


def _classify(client, texts: list[str], version: str = "", headers=None):
    """(answering version, logits) of a stateless KServe request."""
    result = client.infer(MODEL, [_text_tensor(texts)], model_version=version,
                          headers=headers)
    return result.get_response().model_version, result.as_numpy("LOGITS")


def _step(client, text: str, sequence_id: int, *, start=False, end=False, version=""):
    """(answering version, running logits) of one sequence chunk."""
    result = client.infer(STREAM, [_text_tensor([text])], model_version=version,
                          sequence_id=sequence_id, sequence_start=start, sequence_end=end)
    return result.get_response().model_version, result.as_numpy("LOGITS")[0]


class Load:
    """Stateless and sequence clients hammering ``live`` without naming a version; every
    answer is checked against the offline reference of the version that gave it."""

    def __init__(self, address: str, reference, *, clients: int = 2, sequences: int = 2,
                 first_id: int = 1000) -> None:
        self.address = address
        self.reference = reference
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.versions: dict[str, int] = {}        # answers per version
        self.sequence_versions: list[set[str]] = []
        self._lock = threading.Lock()
        self._ids = iter(range(first_id, first_id + 10**6))
        self.threads = [threading.Thread(target=self._stateless, args=(i,), daemon=True)
                        for i in range(clients)]
        self.threads += [threading.Thread(target=self._sequences, args=(i,), daemon=True)
                         for i in range(sequences)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def answers(self, version: str) -> int:
        with self._lock:
            return self.versions.get(version, 0)

    def _count(self, version: str) -> None:
        with self._lock:
            self.versions[version] = self.versions.get(version, 0) + 1

    def _stateless(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        client = triton.InferenceServerClient(self.address, channel_args=OWN_CONNECTION)
        while not self.stop.is_set():
            texts = [random_text(rng, 2, 12) for _ in range(int(rng.integers(1, 4)))]
            try:
                version, logits = _classify(client, texts)
                want = np.stack([self.reference[version].logits(t) for t in texts])
                if not np.allclose(logits, want, atol=ATOL):
                    self.errors.append(f"stateless answer of version {version} differs")
                self._count(version)
            except Exception as exc:  # noqa: BLE001 - recorded, the test asserts none
                self.errors.append(f"stateless: {exc}")

    def _sequences(self, seed: int) -> None:
        rng = np.random.default_rng(100 + seed)
        client = triton.InferenceServerClient(self.address, channel_args=OWN_CONNECTION)
        while not self.stop.is_set():
            with self._lock:
                sequence_id = next(self._ids)
            chunks = [random_text(rng, 1, 6) for _ in range(int(rng.integers(3, 8)))]
            seen: set[str] = set()
            try:
                for index, chunk in enumerate(chunks):
                    version, logits = _step(client, chunk, sequence_id, start=index == 0,
                                            end=index == len(chunks) - 1)
                    seen.add(version)
                    want = self.reference[version].stream(chunks[:index + 1])[-1]
                    if not np.allclose(logits, want, atol=ATOL):
                        self.errors.append(f"sequence {sequence_id} chunk {index} differs "
                                           f"from version {version}'s state")
                    self._count(version)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"sequence {sequence_id}: {exc}")
            self.sequence_versions.append(seen)


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- poll -----------------------------------------------------------------------------------


def test_poll_swaps_versions_under_load_and_open_sequences_stay(tmp_path, sources,
                                                                  second_lstm, reference):
    """An ``rnnserve export`` into the served repository becomes the latest version under
    load: nothing fails, every answer equals offline ORT of the version that gave it, a
    sequence opened before the swap finishes on version 1, new work goes to version 2."""
    from rnnserve.export.exporter import export_checkpoint

    repo = _repository(tmp_path, sources)
    with start_server(repo, model_control="poll", poll_seconds=0.2, max_queue_delay_us=0,
                      unload_wait_seconds=120) as server:
        client = triton.InferenceServerClient(server.address)
        rng = np.random.default_rng(5)
        pinned = [random_text(rng, 2, 6) for _ in range(6)]
        assert _step(client, pinned[0], 7, start=True)[0] == "1"
        with Load(server.address, reference) as load:
            _eventually("answers from version 1", lambda: load.answers("1") >= 20)
            export_checkpoint(second_lstm, repository=repo, name=MODEL)   # becomes live/2
            _eventually("version 2 READY", lambda: _index(client).get("2", ("",))[0]
                        == "READY")
            _eventually("answers from version 2", lambda: load.answers("2") >= 20)
        assert not load.errors, load.errors[:5]
        assert all(len(versions) == 1 for versions in load.sequence_versions)
        assert _health(server.address, f"model/{MODEL}/2") == SERVING

        # version 1 left the directory but finishes the sequence opened on it
        state, reason = _index(client)["1"]
        assert state == "UNAVAILABLE" and "version_policy" in reason
        with pytest.raises(InferenceServerException) as refused:
            _classify(client, ["fine"], version="1")
        assert refused.value.status() == "StatusCode.UNAVAILABLE"
        assert "unloaded" in refused.value.message()
        for index, chunk in enumerate(pinned[1:], start=1):
            version, logits = _step(client, chunk, 7, end=index == len(pinned) - 1)
            assert version == "1"
            np.testing.assert_allclose(logits, reference["1"].stream(pinned[:index + 1])[-1],
                                       atol=ATOL)
        assert _step(client, pinned[0], 8, start=True, end=True)[0] == "2"
        # its last sequence ended: version 1 closes and is no longer found at all
        _eventually("version 1 closed", lambda: _not_found(client, "1"))
        assert _health(server.address, f"model/{MODEL}/1") == NOT_SERVING


def _not_found(client, version: str, headers=None) -> bool:
    try:
        _classify(client, ["fine"], version=version, headers=headers)
    except InferenceServerException as exc:
        return exc.status() == "StatusCode.NOT_FOUND"
    return False


def test_broken_exports_are_refused_once_while_the_old_version_serves(tmp_path, sources,
                                                                      reference, caplog):
    """A corrupt model.onnx, a config that does not fit the version and a half-written
    directory are refused (one log line each, the lifecycle counter, their status in
    RepositoryIndex); version 1 keeps serving; a fixed version 2 is then loaded."""
    repo = _repository(tmp_path, sources)
    live = repo / MODEL
    corrupt = tmp_path / "corrupt"
    shutil.copytree(sources / MODEL / "2", corrupt)
    (corrupt / "model.onnx").write_bytes(b"not an onnx graph" * 100)
    caplog.set_level(logging.INFO, logger="rnnserve.server.registry")
    with start_server(repo, model_control="poll", poll_seconds=0.1, metrics_port=0) as server:
        client = triton.InferenceServerClient(server.address)
        _place(corrupt, live / "2")
        _place(sources / "gru" / "1", live / "3")          # a GRU under an LSTM config
        incomplete = tmp_path / "incomplete"                # copied without its files
        incomplete.mkdir()
        (incomplete / "labels.txt").write_text("negative\npositive\n")
        _place(incomplete, live / "4")
        _eventually("three refusals", lambda: all(
            _index(client).get(v, ("",))[0] == "UNAVAILABLE" for v in "234"))
        index = _index(client)
        assert index["1"] == ("READY", "")
        assert "refused" in index["2"][1] and "onnx" in index["2"][1].lower()
        assert "state inputs" in index["3"][1]
        assert "refused" in index["4"][1] and "metadata.json" in index["4"][1]
        time.sleep(0.5)                                     # several more polls
        refusals = sorted(r.fields["version"] for r in caplog.records
                          if r.getMessage() == "model_version_refused")
        assert refusals == ["2", "3", "4"]                  # once each, not once per poll
        version, logits = _classify(client, ["really great fun"])
        assert version == "1"
        np.testing.assert_allclose(logits[0], reference["1"].logits("really great fun"),
                                   atol=ATOL)
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10).read().decode()
        assert ('rnnserve_model_lifecycle_total{action="load",model="live",result="refused",'
                'version="2"} 1.0') in metrics

        # fix version 2 (replace the directory): it is retried, loaded and served
        shutil.rmtree(live / "3")
        shutil.rmtree(live / "4")
        shutil.rmtree(live / "2")
        _place(sources / MODEL / "2", live / "2")
        _eventually("version 2 READY", lambda: _index(client).get("2", ("",))[0] == "READY")
        version, logits = _classify(client, ["really great fun"])
        assert version == "2"
        np.testing.assert_allclose(logits[0], reference["2"].logits("really great fun"),
                                   atol=ATOL)


# -- explicit -------------------------------------------------------------------------------


TOKEN = "live-repository-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def test_explicit_load_and_unload_through_tritonclient(tmp_path, sources, reference):
    repo = _repository(tmp_path, sources)
    with start_server(repo, model_control="explicit", auth_token=TOKEN,
                      unload_wait_seconds=0.5) as server:
        client = triton.InferenceServerClient(server.address)
        with pytest.raises(InferenceServerException) as denied:
            client.load_model(MODEL)
        assert denied.value.status() == "StatusCode.UNAUTHENTICATED"
        opened = client.infer(STREAM, [_text_tensor(["fine"])], sequence_id=31,
                              sequence_start=True, headers=AUTH)
        assert opened.get_response().model_version == "1"

        _place(sources / MODEL / "2", repo / MODEL / "2")
        assert _classify(client, ["fine"], headers=AUTH)[0] == "1"  # not polled
        client.load_model(MODEL, headers=AUTH)
        assert client.is_model_ready(MODEL, "2", headers=AUTH)
        # version 1 waits for its open sequence at most unload_wait_seconds, then closes
        _eventually("version 1 closed", lambda: _not_found(client, "1", AUTH))
        with pytest.raises(InferenceServerException) as ended:
            client.infer(STREAM, [_text_tensor(["more"])], sequence_id=31, headers=AUTH)
        assert ended.value.status() == "StatusCode.NOT_FOUND"
        version, logits = _classify(client, ["loved the music"], headers=AUTH)
        assert version == "2"
        np.testing.assert_allclose(logits[0], reference["2"].logits("loved the music"),
                                   atol=ATOL)
        index = {m.version: m.state for m in client.get_model_repository_index(
            headers=AUTH).models if m.name == MODEL}
        assert index == {"1": "UNAVAILABLE", "2": "READY"}

        # a broken version is refused by the load itself; version 2 keeps serving
        (repo / MODEL / "3").mkdir()
        with pytest.raises(InferenceServerException) as failed:
            client.load_model(MODEL, headers=AUTH)
        assert failed.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert "version 3" in failed.value.message()
        assert _classify(client, ["fine"], headers=AUTH)[0] == "2"

        with pytest.raises(InferenceServerException) as override:
            client.load_model(MODEL, config='{"max_batch_size": 4}', headers=AUTH)
        assert override.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException) as unknown:
            client.load_model("nope", headers=AUTH)
        assert unknown.value.status() == "StatusCode.NOT_FOUND"

        client.unload_model(MODEL, headers=AUTH)
        assert not client.is_model_ready(MODEL, headers=AUTH)
        with pytest.raises(InferenceServerException) as gone:
            _classify(client, ["fine"], headers=AUTH)
        assert gone.value.status() == "StatusCode.NOT_FOUND"
        states = {m.version: (m.state, m.reason) for m in client.get_model_repository_index(
            headers=AUTH).models if m.name == MODEL}
        assert states["2"] == ("UNAVAILABLE", "unloaded")
        shutil.rmtree(repo / MODEL / "3")
        client.load_model(MODEL, headers=AUTH)
        assert _classify(client, ["fine"], headers=AUTH)[0] == "2"


# -- --workers 2 ----------------------------------------------------------------------------


def test_workers_explicit_swap_under_load(tmp_path, sources, reference):
    """With two front-end processes: a load under traffic fails no request, every answer
    matches its version, a sequence opened before the load continues on version 1 through
    any connection, and every front-end's index shows the new state."""
    repo = _repository(tmp_path, sources)
    with start_server(repo, subprocess=True, workers=2, frontend="python",
                      model_control="explicit",
                      max_queue_delay_us=0) as server:
        clients = [triton.InferenceServerClient(server.address, channel_args=OWN_CONNECTION)
                   for _ in range(4)]
        rng = np.random.default_rng(9)
        pinned = [random_text(rng, 2, 6) for _ in range(len(clients) + 1)]
        assert _step(clients[0], pinned[0], 77, start=True)[0] == "1"
        texts: queue.Queue = queue.Queue()
        channel = server.channel(OWN_CONNECTION)
        stream = sentiment_pb2_grpc.SentimentStub(channel).StreamClassify(
            iter(texts.get, None), timeout=120)
        texts.put(pb.StreamClassifyRequest(text=pinned[0], model=MODEL))
        assert next(stream).version == "1"
        with Load(server.address, reference, first_id=5000) as load:
            _eventually("answers from version 1", lambda: load.answers("1") >= 20)
            _place(sources / MODEL / "2", repo / MODEL / "2")
            clients[0].load_model(MODEL)
            _eventually("answers from version 2", lambda: load.answers("2") >= 20)
        assert not load.errors, load.errors[:5]
        assert all(len(versions) == 1 for versions in load.sequence_versions)
        for client in clients:
            _eventually("front-end catalog", lambda c=client: _index(c).get("2", ("",))[0]
                        == "READY")
        for index, chunk in enumerate(pinned[1:3], start=1):  # the text stream stays on 1
            texts.put(pb.StreamClassifyRequest(text=chunk, end=index == 2))
            answer = next(stream)
            np.testing.assert_allclose(answer.prediction.logits,
                                       reference["1"].stream(pinned[:index + 1])[-1],
                                       atol=ATOL)
        texts.put(None)
        channel.close()
        for index, client in enumerate(clients, start=1):    # spread over the front-ends
            version, logits = _step(client, pinned[index], 77, end=index == len(clients))
            assert version == "1"
            np.testing.assert_allclose(logits, reference["1"].stream(pinned[:index + 1])[-1],
                                       atol=ATOL)
        for client in clients:
            assert _step(client, "fine", 78 + clients.index(client), start=True,
                         end=True)[0] == "2"
        clients[1].unload_model(MODEL)
        for client in clients:
            _eventually("unloaded everywhere", lambda c=client: _index(c).get("2", ("",))
                        == ("UNAVAILABLE", "unloaded"))
            with pytest.raises(InferenceServerException) as gone:
                _classify(client, ["fine"])
            assert gone.value.status() == "StatusCode.NOT_FOUND"
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.address))
        stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name=MODEL),
                                 timeout=60)
        assert _classify(clients[2], ["fine"])[0] == "2"
    events = [(e.get("event"), str(e.get("version"))) for e in server.events()]
    loaded = events.index(("model_loaded", "2"))            # sessions made and warmed ...
    assert loaded < events.index(("model_version_ready", "2"))   # ... before READY
    assert server.find_event("model_version_unloaded")["version"] in ("1", "2")


def _set_policy(repo: Path, **policy) -> None:
    """Rewrite live's config.pbtxt version_policy (latest=N, specific=[...], all=True)."""
    from rnnserve.export.writer import write_config_atomic

    from rnnserve.repository import read_model_config

    path = repo / MODEL / "config.pbtxt"
    config = read_model_config(path)
    config.ClearField("version_policy")
    if "latest" in policy:
        config.version_policy.latest.num_versions = policy["latest"]
    elif "specific" in policy:
        config.version_policy.specific.versions.extend(policy["specific"])
    else:
        config.version_policy.all.SetInParent()
    write_config_atomic(path.parent, config)


def test_version_policy_is_honoured_on_every_load(tmp_path, sources, reference):
    repo = _repository(tmp_path, sources)
    _place(sources / MODEL / "2", repo / MODEL / "2")
    with start_server(repo, model_control="explicit") as server:
        client = triton.InferenceServerClient(server.address)
        assert {v: s for v, (s, _) in _index(client).items()} == {
            "1": "UNAVAILABLE", "2": "READY"}                 # Triton's default: latest 1
        _set_policy(repo, latest=2)
        client.load_model(MODEL)
        assert {v: s for v, (s, _) in _index(client).items()} == {"1": "READY", "2": "READY"}
        version, logits = _classify(client, ["boring plot"], version="1")
        assert version == "1"
        np.testing.assert_allclose(logits[0], reference["1"].logits("boring plot"), atol=ATOL)
        assert _classify(client, ["boring plot"])[0] == "2"     # no version: the latest

        _set_policy(repo, specific=[1])
        client.load_model(MODEL)
        assert _index(client)["2"] == ("UNAVAILABLE", "not selected by version_policy")
        assert _classify(client, ["boring plot"])[0] == "1"

        _set_policy(repo, all=True)
        client.load_model(MODEL)
        assert {v: s for v, (s, _) in _index(client).items()} == {"1": "READY", "2": "READY"}
