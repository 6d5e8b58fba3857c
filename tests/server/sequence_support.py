"""KServe v2 sequence steps through tritonclient, shared by the sequence-state tests."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as triton


def step(client: triton.InferenceServerClient, model: str, text: str, sequence_id, *,
         start: bool = False, end: bool = False, token: str | None = None,
         authorization: str | None = None) -> np.ndarray:
    """Send one chunk of sequence ``sequence_id`` to ``<model>-stream``; its logits.
    ``token`` sends ``authorization: Bearer <token>``; ``authorization`` a raw value."""
    tensor = triton.InferInput("TEXT", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text]], dtype=object))
    if token:
        authorization = f"Bearer {token}"
    headers = {"authorization": authorization} if authorization else None
    result = client.infer(f"{model}-stream", [tensor], sequence_id=sequence_id,
                          sequence_start=start, sequence_end=end, headers=headers)
    return result.as_numpy("LOGITS")[0]
