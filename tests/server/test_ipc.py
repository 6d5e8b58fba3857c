"""server/ipc.py: frames survive any split across reads, in order, and errors and
predictions cross unchanged."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest
from rnnserve.server import errors
from rnnserve.server.ipc import (
    Channel,
    error_from,
    error_reply,
    frame,
    pack_prediction,
    receive_blocking,
    send_blocking,
    unpack_prediction,
)
from rnnserve.server.prediction import Prediction

MESSAGES = [("classify", 1, "m", "", ["a text", "é ünïcode"], "text"), ("end", 0, "m", "1", 7,
            "ended"), ("ok", 2, b"\x00" * 300), ("serve",)]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 10_000])
def test_frames_split_anywhere_arrive_whole_and_in_order(step):
    async def run() -> list:
        received = []
        channel = Channel(received.append, lambda exc: None)
        data = b"".join(frame(m) for m in MESSAGES)
        for offset in range(0, len(data), step):
            channel.data_received(data[offset:offset + step])
        return received

    assert asyncio.run(run()) == MESSAGES


def test_channel_pair_exchanges_messages_both_ways():
    async def run():
        left, right = socket.socketpair()
        got_left, got_right = [], []
        a = await Channel.open(left, got_left.append, lambda exc: None)
        b = await Channel.open(right, got_right.append, lambda exc: None)
        for message in MESSAGES:
            a.send(message)
        b.send(("ok", 9, None))
        while len(got_right) < len(MESSAGES) or not got_left:
            await asyncio.sleep(0.01)
        a.close()
        b.close()
        return got_left, got_right

    got_left, got_right = asyncio.run(run())
    assert got_right == MESSAGES and got_left == [("ok", 9, None)]


def test_blocking_helpers_and_payloads():
    left, right = socket.socketpair()
    send_blocking(left, ("start", {"x": 1}, 3))
    assert receive_blocking(right) == ("start", {"x": 1}, 3)
    left.close()
    with pytest.raises(EOFError):
        receive_blocking(right)
    prediction = Prediction("positive", np.array([0.25, 0.75], np.float32),
                            np.array([-1.0, 2.5], np.float32), 5, 1, b"snap")
    back = unpack_prediction(pack_prediction(prediction), ["negative", "positive"])
    assert (back.label, back.tokens, back.label_index, back.state) == ("positive", 5, 1, b"snap")
    np.testing.assert_array_equal(back.logits, prediction.logits)
    np.testing.assert_array_equal(back.probabilities, prediction.probabilities)
    for error in (errors.NotFound("gone"), errors.ResourceExhausted("full"),
                  errors.Unavailable("later")):
        kind, request_id, code, message = error_reply(4, error)
        rebuilt = error_from(code, message)
        assert (kind, request_id, type(rebuilt), rebuilt.message) == ("err", 4, type(error),
                                                                       error.message)
    assert type(error_from(*error_reply(5, KeyError("x"))[2:])) is errors.Internal
