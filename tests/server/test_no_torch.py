"""The server never imports torch (nor train/export code), and `serve` imports lazily."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from serving import start_server
from rnnserve.protos import sentiment_pb2 as pb, sentiment_pb2_grpc
with start_server({repo!r}) as server:
    stub = sentiment_pb2_grpc.SentimentStub(server.channel())
    stub.Classify(pb.ClassifyRequest(texts=["good fun"], model="tiny-lstm"))
    list(stub.StreamClassify(iter([pb.StreamClassifyRequest(text="good", model="tiny-gru",
                                                             end=True)])))
bad = sorted(m for m in sys.modules
             if m.split(".")[0] == "torch" or m.startswith(("rnnserve.train", "rnnserve.export")))
print(json.dumps(bad))
"""


def test_serving_imports_no_torch(tiny_repository):
    script = SCRIPT.format(tests=str(TESTS), repo=str(tiny_repository))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_serve_command_module_is_light():
    script = ("import sys; import rnnserve.server.commands; "
              "print(sorted(m for m in ('grpc', 'onnxruntime', 'numpy', 'torch') "
              "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
