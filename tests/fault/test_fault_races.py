"""Races between explicit end, idle expiry, cancel and restart of the same KServe sequence id.

A (re)started sequence must always run from zero state: its first answer equals the offline
result for its first chunk alone; a continuation that is answered OK equals the offline
result for every chunk since its own start (never another sequence's state).
"""

from __future__ import annotations

import random
import threading
import time

import grpc
import numpy as np
from fault_support import (
    WORDS,
    StatusTally,
    admitted,
    assert_sequences_released,
    healthy_classify,
    infer_request,
    logits_of,
    poll,
    run_workers,
    skip_unless_slow,
    slow,
)
from offline import Offline
from serving import start_server
from tritonclient.grpc import service_pb2_grpc

LSTM, GRU = "tiny-lstm", "tiny-gru"
IDLE = 0.15
THREADS = 4


def test_sequence_races(tiny_repository):
    _races(tiny_repository, iterations=60)


@slow
@skip_unless_slow
def test_sequence_races_slow(tiny_repository):
    _races(tiny_repository, iterations=600)


def _races(repository, iterations: int) -> None:
    offline = {name: Offline(repository, name) for name in (LSTM, GRU)}
    tally = StatusTally("sequence races")
    failures: list[str] = []
    lock = threading.Lock()
    with start_server(repository, sequence_idle_seconds=IDLE, max_queue_delay_us=200) as server:
        def worker(seed: int) -> None:
            rng = random.Random(seed)
            with server.channel() as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                for iteration in range(iterations):
                    _iteration(stub, rng, seed, iteration, offline, tally, failures, lock)

        run_workers(THREADS, worker, failures)
        tally.assert_documented()
        assert not failures, failures[:10]
        assert_sequences_released(server, (LSTM, GRU))
        _, response = healthy_classify(server, GRU)
        assert response.predictions[0].label


def _chunk(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))


def _iteration(stub, rng, seed, iteration, offline, tally, failures, lock) -> None:
    model = rng.choice([LSTM, GRU])
    reference = offline[model]
    own = seed * 1_000_000 + rng.randint(1, 3)       # ids only this worker uses
    shared = rng.choice([7, "seven"])                # ids every worker fights over
    sequence_id = own if rng.random() < 0.7 else shared
    plan = [("start", _chunk(rng))]
    for _ in range(rng.randint(0, 4)):
        plan.append((rng.choice(["next", "next", "next", "restart", "end"]), _chunk(rng)))
    if rng.random() < 0.5:
        # an empty end only last and only on own ids: a chunk queued behind an empty end
        # (also another client's, on a shared id) hangs, test_chunk_queued_behind_empty_end
        kinds = ["end", "end_empty"] if sequence_id == own else ["end"]
        plan.append((rng.choice(kinds), _chunk(rng)))
    requests = []
    for index, (kind, text) in enumerate(plan):
        params = {"sequence_id": sequence_id}
        if kind in ("start", "restart"):
            params["sequence_start"] = True
        if kind in ("end", "end_empty"):
            params["sequence_end"] = True
            text = "" if kind == "end_empty" else text
        requests.append(infer_request(f"{model}-stream", text, request_id=str(index),
                                      **params))
    cancel_after = rng.randint(1, len(requests)) if rng.random() < 0.15 else None
    call = stub.ModelStreamInfer(iter(requests), timeout=15)
    answers = {}
    try:
        for response in call:
            answers[response.infer_response.id] = response
            if cancel_after is not None and len(answers) >= cancel_after:
                call.cancel()
                break
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            tally.record("ModelStreamInfer", error.code(), error.details() or "", plan)
    history: list[int] = []
    alive = False
    for index, (kind, text) in enumerate(plan):
        tally.case("chunk")
        response = answers.get(str(index))
        if response is None:
            break
        ok = not response.error_message
        tally.record("chunk", grpc.StatusCode.OK if ok else grpc.StatusCode.INVALID_ARGUMENT
                     if not response.error_message.startswith("internal") else
                     grpc.StatusCode.INTERNAL, response.error_message, plan)
        text = "" if kind == "end_empty" else text
        if kind in ("start", "restart"):
            history = reference.ids(text)
            alive = ok
            if not ok:
                continue
            expected = reference.logits_of_ids(history)
        else:
            if not ok:
                alive = False
                continue
            if not alive:
                # On a shared id another worker may have (re)started the sequence since
                # this worker's failed chunk, so an OK there proves nothing.
                if sequence_id == own:
                    _fail(failures, lock, f"{model} id {sequence_id!r}: chunk {index} "
                          f"({kind}) answered OK on a sequence that was not open")
                continue
            history = history + reference.ids(text)
            expected = reference.logits_of_ids(history)
        if sequence_id == shared and kind not in ("start", "restart"):
            continue        # others may legitimately restart a shared id in between
        got = np.asarray(logits_of(response.infer_response))
        if not np.allclose(got, expected, atol=1e-5, rtol=0):
            _fail(failures, lock, f"{model} id {sequence_id!r} chunk {index} ({kind}): "
                  f"{got} != offline {expected} (state shared or not zeroed)")
        if kind in ("end", "end_empty"):
            alive = False
    if rng.random() < 0.2:
        time.sleep(IDLE * 1.5)             # let this worker's ids expire now and then


def _fail(failures, lock, message: str) -> None:
    with lock:
        failures.append(message)


def test_chunk_queued_behind_empty_end_is_answered(tiny_repository):
    """A chunk queued behind an empty end chunk (while an earlier chunk ran) is answered
    with an error and gives its queue place back; it must not hang."""
    server = start_server(tiny_repository, chunk_length=8)
    try:
        with server.channel() as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            long_text = " ".join(WORDS * 40)           # ~900 tokens: 100+ ORT steps, busy
            requests = [
                infer_request(f"{GRU}-stream", long_text, request_id="0", sequence_id=42,
                              sequence_start=True),
                infer_request(f"{GRU}-stream", "", request_id="1", sequence_id=42,
                              sequence_end=True),
                infer_request(f"{GRU}-stream", "fun", request_id="2", sequence_id=42)]
            answers = []
            try:
                answers.extend(stub.ModelStreamInfer(iter(requests), timeout=3))
            except grpc.RpcError as error:
                assert error.code() != grpc.StatusCode.DEADLINE_EXCEEDED, (
                    f"chunk behind the empty end never answered; got {len(answers)} of 3")
                raise
            assert [a.infer_response.id for a in answers] == ["0", "1", "2"]
            assert answers[2].error_message          # NOT_FOUND/ABORTED: it was ended
        assert poll(lambda: admitted(server, GRU) == 0, timeout=2), admitted(server, GRU)
    finally:
        server.stop(grace=0.5)       # the leaked chunk would hold a longer grace period
