"""Child process for tests/server/test_cuda_fallback.py: load one model the way the server
does (OnnxModel, warm-up in every binding mode, one run) and write what happened as JSON.

Usage: ``python cuda_model_driver.py MODEL_DIR DEVICE RESULT_JSON``. Logs go to stderr
(JSON lines, as the server writes them); stdout is left alone so the test can check that
nothing (no ORT banner) was printed there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from rnnserve.server.logs import configure_logging
from rnnserve.server.runtime import OnnxModel, RuntimeUnavailable
from rnnserve.server.settings import ServerSettings

from rnnserve.repository import RepositoryMetadata


def main() -> None:
    configure_logging("json", "INFO")
    model_dir, device, result = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    meta = RepositoryMetadata.model_validate_json((model_dir / "metadata.json").read_text())
    try:
        model = OnnxModel(model_dir / "model.onnx", meta, ServerSettings(device=device),
                          max_batch_size=4)
        model.warmup([1, 4], [3])
        logits, _ = model.run(np.ones((2, 3), np.int64), np.array([3, 1], np.int64), None,
                              want_state=False)
        out = {"provider": model.provider, "logits_shape": list(logits.shape)}
    except RuntimeUnavailable as exc:
        out = {"unavailable": str(exc)}
    result.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
