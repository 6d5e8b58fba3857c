"""MLServer peer runtime: a custom ``MLModel`` running the rnnserve ONNX model with ORT.

``parameters.uri`` is the repository version directory; ``parameters.extra.threads`` the ORT
intra-op thread count. Input: one BYTES tensor ``TEXT`` (any shape, one text per element);
outputs ``LOGITS`` and ``PROBABILITIES`` ``[batch, labels]`` FP32. MLServer's adaptive
batcher concatenates concurrent requests along the first axis before ``predict``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_model import OnnxTextClassifier


def _texts(payload: InferenceRequest) -> list[str]:
    data = payload.inputs[0].data
    items = data.root if hasattr(data, "root") else data
    return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in items]


class OnnxTextRuntime(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra = (params.extra or {}) if params else {}
        self._classifier = OnnxTextClassifier(params.uri, threads=int(extra.get("threads", 1)))
        self._classifier(["warm up"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        logits, probabilities = self._classifier(_texts(payload))
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output("LOGITS", np.ascontiguousarray(logits)),
                NumpyCodec.encode_output("PROBABILITIES", probabilities),
            ],
        )
