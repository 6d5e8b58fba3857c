"""Cancelled streams and dropped connections free their sequences and leak no server tasks."""

from __future__ import annotations

import queue
import time

import grpc
from fault_support import WORDS, loop_task_count, open_sequences, poll
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from serving import start_server

LSTM, GRU = "tiny-lstm", "tiny-gru"
STREAMS = 24


def _requests(inbox: queue.Queue):
    while True:
        item = inbox.get()
        if item is None:
            return
        yield item


def test_cancelled_and_dropped_streams_free_state_and_tasks(tiny_repository):
    with start_server(tiny_repository) as server:
        baseline_tasks = loop_task_count(server)
        shared = server.channel()
        streams = []
        for index in range(STREAMS):
            # every 4th stream on its own channel, which is then closed under it
            channel = server.channel() if index % 4 == 0 else shared
            stub = sentiment_pb2_grpc.SentimentStub(channel)
            inbox: queue.Queue = queue.Queue()
            model = LSTM if index % 2 else GRU
            inbox.put(pb.StreamClassifyRequest(text=" ".join(WORDS[:5]), model=model))
            inbox.put(pb.StreamClassifyRequest(text=" ".join(WORDS[5:9])))
            call = stub.StreamClassify(_requests(inbox), timeout=60)
            streams.append((index, channel, inbox, call))
        for _, _, _, call in streams:              # both chunks answered: sequences open
            assert next(call).chunk_index == 1
            assert next(call).chunk_index == 2
        assert open_sequences(server, LSTM) + open_sequences(server, GRU) == STREAMS
        # queue more chunks behind the abrupt ends so some are in flight or pending
        for _, _, inbox, _ in streams:
            for _ in range(3):
                inbox.put(pb.StreamClassifyRequest(text=" ".join(WORDS[9:20])))
        codes = {}
        for index, channel, inbox, call in streams:
            if index % 4 == 0:
                channel.close()                     # connection dropped
            elif index % 4 == 1:
                call.cancel()                       # client cancels
            else:
                inbox.put(pb.StreamClassifyRequest(text="", end=True))
                inbox.put(None)
                codes[index] = [r.end for r in call][-1:]
        for index, _, inbox, call in streams:
            if index % 4 in (0, 1):
                inbox.put(None)
                try:
                    list(call)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.CANCELLED, error
        assert all(ends == [True] for ends in codes.values()), codes
        assert poll(lambda: open_sequences(server, LSTM) == 0
                    and open_sequences(server, GRU) == 0, timeout=10), (
            open_sequences(server, LSTM), open_sequences(server, GRU))
        shared.close()
        tasks = poll(lambda: loop_task_count(server) <= baseline_tasks, timeout=10)
        assert tasks, (loop_task_count(server), baseline_tasks)
        # every freed slot is reusable: a new stream works at once
        with server.channel() as channel:
            stub = sentiment_pb2_grpc.SentimentStub(channel)
            started = time.perf_counter()
            responses = list(stub.StreamClassify(iter([pb.StreamClassifyRequest(
                text="a great film", model=LSTM, end=True)]), timeout=10))
            assert responses[-1].end and time.perf_counter() - started < 2
