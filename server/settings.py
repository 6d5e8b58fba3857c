"""Server configuration: flags and ``RNNSERVE_*`` environment variables.

Precedence (highest first): values passed to the constructor (command-line flags), then
environment variables (``RNNSERVE_PORT=9001``), then the defaults below. No ``.env`` file
is read.

Fields left ``None`` fall back to the model's ``config.pbtxt`` (per model), then to the
built-in default named in the field's description. Every field is documented in
docs/server.md (the settings table is checked against this class by a test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from .security import SecuritySettings

Device = Literal["auto", "cpu", "cuda"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
LogFormat = Literal["json", "kv"]
ModelControl = Literal["none", "poll", "explicit"]
Frontend = Literal["auto", "python", "native"]


class ServerSettings(SecuritySettings):
    """Everything ``rnnserve serve`` can be told. Immutable once built.

    Inherits the transport-security fields (TLS, bearer tokens, connection limits) from ``server/security.py``'s SecuritySettings,
    so one flat ``RNNSERVE_*`` namespace configures the whole server.
    """

    model_config = SettingsConfigDict(env_prefix="RNNSERVE_", extra="ignore", frozen=True,
                                      env_ignore_empty=True)

    # --- where and what ---------------------------------------------------------------
    repository: Path = Field(Path("model_repository"),
                             description="Triton-layout model repository to serve.")
    host: str = Field("0.0.0.0", description="Address the gRPC server binds.")
    port: int = Field(8001, ge=0, le=65535,
                      description="gRPC port; 0 picks a free port (logged at start-up).")
    metrics_host: str = Field("0.0.0.0", description="Address of the Prometheus endpoint.")
    metrics_port: int = Field(8002, ge=-1, le=65535,
                              description="Prometheus /metrics port; 0 = any free port, "
                                          "-1 = no metrics endpoint.")
    metrics_enabled: bool = Field(True, description="Publish Prometheus metrics; False makes "
                                  "the telemetry hooks no-ops (KServe statistics stay exact).")
    default_model: str | None = Field(None, description="Model an empty model name selects; "
                                      "default: the only model, if there is exactly one.")
    workers: int | Literal["auto"] = Field(1, description="Processes that carry gRPC "
                                           "(front-ends) on the one port, and ORT sessions "
                                           "per model unless instances or the model's "
                                           "instance_group sets them; auto = the CPUs "
                                           "available. 1 = one process serves everything "
                                           "(docs/architecture.md §4).")

    frontend: Frontend = Field("auto", description="What carries gRPC on the public port: "
                               "python (grpc.aio), native (a C++ gRPC front-end the server "
                               "starts and compiles on first use; docs/architecture.md §5) "
                               "or auto: python with one worker; with more, native where it "
                               "can be built (the images ship it), else python (one log "
                               "line says why).")
    native_cache: Path = Field(Path("~/.cache/rnnserve/native"), description="Where the "
                               "native front-end is compiled to and looked for (the images "
                               "ship it prebuilt in /opt/rnnserve/native).")

    model_control: ModelControl = Field("none", description="none: the versions loaded at "
                                        "start-up are served until exit; poll: rescan the "
                                        "repository every poll_seconds; explicit: KServe "
                                        "RepositoryModelLoad/Unload (docs/server.md \"Live "
                                        "model repository\").")
    poll_seconds: float = Field(5.0, gt=0, description="Repository rescan period with "
                                "model_control poll.")
    unload_wait_seconds: float = Field(60.0, ge=0, description="An unloaded version finishes "
                                       "its open sequences for at most this long, then "
                                       "closes (sequences still open end).")

    # --- ONNX Runtime -----------------------------------------------------------------
    device: Device = Field("auto", description="auto: CUDA if usable, else CPU (one log line "
                           "says which and why); cpu; cuda: fail start-up without CUDA.")
    cuda_device_id: int = Field(0, ge=0, description="CUDA device ordinal.")
    intra_op_threads: int = Field(0, ge=0, description="ORT intra-op threads per session; "
                                  "0 = the CPUs this process may use (taskset/cpuset) minus "
                                  "one for the event loop, shared among the sessions "
                                  "(instances), at least 1.")
    inter_op_threads: int = Field(1, ge=0, description="ORT inter-op threads per session.")
    graph_optimization: GraphOptimization = Field("all", description="ORT graph optimisation "
                                                  "level.")
    cpu_mem_arena: bool = Field(True, description="ORT CPU memory arena.")
    mem_pattern: bool = Field(True, description="ORT memory-pattern planning.")
    intra_op_spinning: bool = Field(False, description="Let ORT's intra-op threads spin "
                                    "between ops (ORT's default; hurts when cores are shared "
                                    "with the event loop, measured 2x slower on 2 cores).")
    cuda_arena_extend_strategy: Literal["next_power_of_two", "same_as_requested"] = Field(
        "next_power_of_two", description="CUDA arena growth policy.")
    cuda_mem_limit_bytes: int = Field(0, ge=0, description="CUDA arena limit; 0 = unlimited.")
    instances: int | None = Field(None, ge=1, description="Sessions (execution instances) per "
                                  "model version; default: config instance_group count, else "
                                  "workers.")
    warmup: bool = Field(True, description="Run every batch-size bucket once before ready.")

    # --- CUDA numerics and sequence-state placement (owner: server/runtime.py) ---------
    cuda_tf32: bool = Field(False, description="Let cuBLAS/cuDNN use TF32 for fp32 "
                            "math on CUDA (ORT's own default is on). Off: fp32 results keep "
                            "the 1e-5 parity and chunked = whole guarantees, which were "
                            "measured with full fp32.")
    allow_unverified_fp16: bool = Field(False, description="Serve an fp16 model on CUDA "
                                        "although its metadata has no GPU accuracy check "
                                        "(validation fp16_cuda_validated); otherwise "
                                        "--device auto runs it on CPU and --device cuda "
                                        "refuses it.")
    state_pool: Literal["auto", "host", "device"] = Field(
        "auto", description="Where open sequences' state lives: host (numpy), device (ORT "
        "values on the serving provider, gathered and scattered there), auto (device on "
        "CUDA, host on CPU).")

    # --- batching ---------------------------------------------------------------------
    max_batch_size: int | None = Field(None, ge=1, description="Rows per ORT call; default "
                                       "config max_batch_size.")
    max_queue_delay_us: int | None = Field(None, ge=0, description="Longest a row waits for "
                                           "a fuller batch; default config dynamic_batching"
                                           ".max_queue_delay_microseconds, else 500.")
    adaptive_queue_delay: bool = Field(True, description="Wait only for as many rows as the "
                                       "previous batch had, so lone clients never wait.")
    length_split: bool = Field(True, description="Run a batch as several ORT calls of "
                               "similar-length rows when a cost model measured at load says "
                               "that beats padding every row to the longest.")
    max_queue_size: int = Field(4096, ge=1, description="Accepted, unfinished rows (texts and "
                                "chunks) per model version; beyond it RESOURCE_EXHAUSTED.")
    chunk_length: int | None = Field(None, ge=1, description="Max tokens of one row per ORT "
                                     "call (longer texts run in chunks with carried state); "
                                     "default config rnnserve.chunk_length, else 256.")
    max_texts_per_request: int = Field(256, ge=1, description="Texts in one Classify call.")
    max_text_length: int = Field(100_000, ge=1, description="Characters in one text or "
                                 "stream chunk, and tokens in one pre-tokenized row; longer "
                                 "ones are refused (INVALID_ARGUMENT) before any work.")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest gRPC "
                                   "message received (sent: 4x, responses carry floats).")

    # --- sequences --------------------------------------------------------------------
    max_sequences: int = Field(4096, ge=1, description="Open sequences per model version "
                               "(state pool slots).")
    sequence_idle_seconds: float | None = Field(None, gt=0, description="Idle sequences "
                                                "expire after this; default config "
                                                "max_sequence_idle_microseconds, else 60.")
    max_pending_chunks: int = Field(64, ge=1, description="Chunks one sequence may have "
                                    "queued (pipelined) at once.")
    evict_idle_sequences: bool = Field(False, description="When the pool is full, evict the "
                                       "least recently used idle sequence instead of "
                                       "refusing the new one.")
    max_sequences_per_client: int = Field(0, ge=0, description="Open sequences one client "
                                          "(its bearer token, else its peer address) may "
                                          "hold across all models; 0 = no per-client limit.")
    state_key: SecretStr | None = Field(None, description="Key(s) that sign exported "
                                        "sequence state (HMAC-SHA256), comma-separated; "
                                        "the first signs, all verify. Unset: snapshots "
                                        "carry a SHA-256 checksum only.")
    state_key_file: Path | None = Field(None, description="File of state keys, one per "
                                        "line (``#`` comments), added after state_key.")

    # --- operations -------------------------------------------------------------------
    grace_seconds: float = Field(30.0, ge=0, description="Shutdown: longest wait for accepted "
                                 "work before remaining calls are cancelled.")
    drain_delay_seconds: float = Field(0.0, ge=0, description="Shutdown: keep serving this "
                                       "long after health turns NOT_SERVING (lets load "
                                       "balancers notice).")
    log_format: LogFormat = Field("json", description="json or kv (key=value), one line per "
                                  "event.")
    log_level: str = Field("INFO", description="Python logging level name.")

    @field_validator("workers")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if value != "auto" and int(value) < 1:
            raise ValueError("workers must be at least 1, or auto")
        return value

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()
