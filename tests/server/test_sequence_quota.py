"""Per-client limit on open sequences: counted across APIs and models, given back by end,
export and expiry, and keyed by token when authentication is on."""

from __future__ import annotations

import time

import grpc
import pytest
import tritonclient.grpc as triton
from offline import GRU, LSTM
from rnnserve.protos import sentiment_pb2 as pb
from rnnserve.protos import sentiment_pb2_grpc
from sequence_support import step
from serving import start_server

TOKEN_A = "token-aaaaaaaaaaaaaaaa"
TOKEN_B = "token-bbbbbbbbbbbbbbbb"


def _open(client, model, sid, *, token=None, end=False):
    step(client, model, "a fine film", sid, start=True, end=end, token=token)


def _refused(call) -> str:
    with pytest.raises(triton.InferenceServerException) as error:
        call()
    assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    return error.value.message()


def test_quota_counts_across_models_and_apis_and_is_given_back(tiny_repository):
    with (start_server(tiny_repository, max_sequences_per_client=2,
                       sequence_idle_seconds=1.0) as server,
          server.channel() as channel):
        client = triton.InferenceServerClient(server.address)
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        _open(client, LSTM, 1)
        _open(client, GRU, 2)                     # a second model shares the quota
        message = _refused(lambda: _open(client, LSTM, 3))
        assert "per-client limit is 2" in message
        with pytest.raises(grpc.RpcError) as error:     # the text API is counted too
            list(stub.StreamClassify(iter([pb.StreamClassifyRequest(text="x", model=LSTM)]),
                                     timeout=10))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        # a sequence that opens and ends in one request never holds more than one slot
        step(client, LSTM, "ok", 1, end=True)
        _open(client, LSTM, 3)                    # ending gave one back
        exported = stub.ExportSequence(pb.ExportSequenceRequest(
            model=GRU, sequence=pb.SequenceRef(sequence_id=2), release=True), timeout=10)
        _open(client, LSTM, 4)                    # exporting with release gave one back
        with pytest.raises(grpc.RpcError) as error:     # importing is opening
            stub.ImportSequence(pb.ImportSequenceRequest(
                sequence=pb.SequenceRef(sequence_id=5), state=exported.state), timeout=10)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        time.sleep(2.5)                           # idle sequences expire ...
        _open(client, LSTM, 6)                    # ... and give their share back
        _open(client, LSTM, 7)
        assert server.registry.quota.count and sum(server.registry.quota.count.values()) == 2


def test_quota_is_per_token_when_authentication_is_on(tiny_repository):
    with start_server(tiny_repository, max_sequences_per_client=1,
                      auth_token=f"{TOKEN_A},{TOKEN_B}") as server:
        client = triton.InferenceServerClient(server.address)
        _open(client, LSTM, 1, token=TOKEN_A)
        assert "per-client limit is 1" in _refused(lambda: _open(client, LSTM, 2,
                                                                 token=TOKEN_A))
        _open(client, LSTM, 2, token=TOKEN_B)     # same address, other token: own quota
        assert len(server.registry.quota.count) == 2
        # another spelling of the same credentials is the same client
        with pytest.raises(triton.InferenceServerException) as error:
            step(client, LSTM, "fine", 3, start=True, authorization=f"bearer  {TOKEN_A}")
        assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
