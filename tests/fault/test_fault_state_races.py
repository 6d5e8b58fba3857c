"""Races around sequence state export/import: workers move sequences between ids while
others end, restart, expire and fight over shared ids.

Invariants checked: an answered continuation always equals the offline result for the
history its sequence really has (its own chunks, or the exported history it was imported
from), so no sequence ever runs on another one's state; every status is documented; in the
end the state pool is whole and every client's quota unit was given back exactly once.
"""

from __future__ import annotations

import random
import threading

import grpc
import numpy as np
from fault_support import (
    WORDS,
    StatusTally,
    assert_sequences_released,
    code_of,
    infer_request,
    logits_of,
    run_workers,
    skip_unless_slow,
    slow,
)
from offline import Offline
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server
from tritonclient.grpc import service_pb2_grpc

LSTM, GRU = "tiny-lstm", "tiny-gru"
THREADS = 4
IDLE = 0.3


def test_state_migration_races(tiny_repository):
    _races(tiny_repository, iterations=150)


@slow
@skip_unless_slow
def test_state_migration_races_slow(tiny_repository):
    _races(tiny_repository, iterations=1500)


def _races(repository, iterations: int) -> None:
    offline = {name: Offline(repository, name) for name in (LSTM, GRU)}
    tally = StatusTally("state migration races")
    failures: list[str] = []
    with start_server(repository, sequence_idle_seconds=IDLE, max_queue_delay_us=200) as server:
        def worker(seed: int) -> None:
            with server.channel() as channel:
                lanes = _Lanes(seed, channel, offline, tally, failures)
                for _ in range(iterations):
                    lanes.act()

        run_workers(THREADS, worker, failures)
        tally.assert_documented()
        assert not failures, failures[:10]
        assert tally.counts[("import", "OK")] > 0 and tally.counts[("export", "OK")] > 0
        assert_sequences_released(server, (LSTM, GRU))


class _Lanes:
    """One worker: a few own ids with known histories, plus shared ids everyone fights over
    (only statuses are checked on those)."""

    def __init__(self, seed, channel, offline, tally, failures) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self.text = sentiment_pb2_grpc.SentimentStub(channel)
        self.offline = offline
        self.tally = tally
        self.failures = failures
        # own id -> ids so far; an own id encodes its model (ids are per model version)
        self.history: dict[int, list[int]] = {}
        self.snapshots: dict[str, list[tuple[list[int], bytes]]] = {LSTM: [], GRU: []}

    def act(self) -> None:
        rng = self.rng
        model = rng.choice([LSTM, GRU])
        own = self.seed * 1_000_000 + (0 if model == LSTM else 100) + rng.randint(1, 3)
        sid = own if rng.random() < 0.75 else rng.choice([11, 12])
        action = rng.choice(["start", "step", "step", "step", "export", "export", "import",
                             "end", "idle"])
        getattr(self, f"_{action}")(model, sid, sid == own)

    def _chunk(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 6)))

    def _infer(self, model, sid, text, **params):
        request = infer_request(f"{model}-stream", text, sequence_id=sid, **params)
        self.tally.case("infer")
        code, details, response = code_of(lambda: self.kserve.ModelInfer(request, timeout=20))
        self.tally.record("infer", code, details, (model, sid, params))
        return code, response

    def _check(self, model, sid, ids, response) -> None:
        expected = self.offline[model].logits_of_ids(ids)
        got = np.asarray(logits_of(response))
        if not np.allclose(got, expected, atol=1e-5, rtol=0):
            self.failures.append(f"{model} id {sid}: {got} != offline {expected} (a sequence "
                                 "ran on state that is not its own)")

    def _start(self, model, sid, own) -> None:
        text = self._chunk()
        code, response = self._infer(model, sid, text, sequence_start=True)
        if own:
            self.history.pop(sid, None)
            if code == grpc.StatusCode.OK:
                ids = self.offline[model].ids(text)
                self.history[sid] = ids
                self._check(model, sid, ids, response)

    def _step(self, model, sid, own) -> None:
        ids = self.history.get(sid)
        text = self._chunk()
        code, response = self._infer(model, sid, text)
        if not own:
            return
        if code != grpc.StatusCode.OK:
            self.history.pop(sid, None)     # expired, or never open: forget it
            return
        if ids is None:
            self.failures.append(f"id {sid}: a step answered OK on an id this worker never "
                                 "opened")
            return
        ids = ids + self.offline[model].ids(text)
        self.history[sid] = ids
        self._check(model, sid, ids, response)

    def _export(self, model, sid, own) -> None:
        ids = self.history.get(sid)
        release = self.rng.random() < 0.5
        self.tally.case("export")
        code, details, response = code_of(lambda: self.text.ExportSequence(
            pb.ExportSequenceRequest(model=model, sequence=pb.SequenceRef(sequence_id=sid),
                                     release=release), timeout=20))
        self.tally.record("export", code, details, (model, sid))
        if not own:
            return
        if code == grpc.StatusCode.OK and ids is not None:
            if response.total_tokens != len(ids):
                self.failures.append(f"id {sid}: exported {response.total_tokens} tokens, "
                                     f"history has {len(ids)}")
            self.snapshots[model] = [*self.snapshots[model][-7:], (ids, response.state)]
        if release or code != grpc.StatusCode.OK:
            self.history.pop(sid, None)

    def _import(self, model, sid, own) -> None:
        if not self.snapshots[model]:
            return
        ids, blob = self.rng.choice(self.snapshots[model])
        self.tally.case("import")
        code, details, response = code_of(lambda: self.text.ImportSequence(
            pb.ImportSequenceRequest(sequence=pb.SequenceRef(sequence_id=sid), state=blob),
            timeout=20))
        self.tally.record("import", code, details, (model, sid))
        if own and code == grpc.StatusCode.OK:
            self.history[sid] = ids
            if response.total_tokens != len(ids):
                self.failures.append(f"id {sid}: imported {response.total_tokens} tokens, "
                                     f"snapshot history has {len(ids)}")

    def _end(self, model, sid, own) -> None:
        self._infer(model, sid, "", sequence_end=True)
        if own:
            self.history.pop(sid, None)

    def _idle(self, model, sid, own) -> None:
        if self.rng.random() < 0.3:
            threading.Event().wait(IDLE * 1.5)      # let this worker's ids expire
            self.history.clear()
