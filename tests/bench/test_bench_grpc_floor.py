"""Smoke test of ``python -m rnnserve.bench.grpc_floor`` for the two C++ kinds: grpc's
empty C++ server and rnnserve's calls route (the native front-end handing each call to a
Python ``CallEndpoint``). Every kind must answer its sampled calls with ``grpc-status: 0``
and all of h2load's calls; the rates are only checked to be positive (CI shares two cores)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None,
                                reason="h2load missing: bash .ci/install-h2load.sh")


def test_the_calls_route_floor_is_measured_beside_grpcs_own(native_frontend_binary, capsys):
    from rnnserve.bench import grpc_floor

    cpus = sorted(os.sched_getaffinity(0))
    assert grpc_floor.main(["--kinds", "calls,cxx", "--requests", "500",
                            "--server-cpu", str(cpus[-1]), "--client-cpu", str(cpus[0])]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(results) == {"calls", "cxx"}
    assert all(result["req_s"] > 0 for result in results.values())


def test_an_unknown_kind_is_refused_with_the_choices(capsys):
    from rnnserve.bench import grpc_floor

    with pytest.raises(SystemExit) as exited:
        grpc_floor.main(["--kinds", "calls,nope"])
    assert exited.value.code == 2
    assert "unknown --kinds nope; choose from sync, aio, aio-uvloop, cxx, calls" in \
        capsys.readouterr().err
