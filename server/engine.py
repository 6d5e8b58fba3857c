"""ModelEngine: one served model version, the single path every protocol uses.

Text API and KServe traffic both come through here, so they are batched together (one
scheduler per model version) and counted once (one ModelTelemetry).

Invariants:
- Nothing reaches the scheduler unvalidated: texts are non-blank (the worker, which
  tokenizes each batch's texts together, refuses one that still yields no token) and at
  most ``max_text_length`` characters, their count is within ``max_texts_per_request``,
  caller-supplied token ids are in the vocabulary and at most ``max_text_length`` long.
- Validation failures leave no side effects (no admitted rows, no opened sequence).
- ``classify`` returns Predictions in request order; ``submit_step`` answers a sequence's
  chunks in submission order (futures resolve in that order).
- Every request reports ``request_finished`` exactly once (here, or where ``api`` None
  says the caller does: server/accounting.py).
- A sequence is exported only while idle (no chunk queued or running), so its snapshot is
  the state after its last answered chunk; an imported sequence continues from exactly the
  snapshot's state (its first step reads the slot, it is not ``fresh``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2

from rnnserve.repository import (
    LABELS_FILE,
    METADATA_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    RepositoryError,
    RepositoryMetadata,
    config_parameters,
)

from .accounting import report, report_when_settled
from .batcher import BatchRequest, Scheduler, SequenceBatcher
from .catalog import EngineOptions, ModelEntry, StepAwaiting, StreamKey
from .errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ServingError,
    Unavailable,
)
from .execution import BatchExecutor, Row
from .logs import log_event
from .prediction import Prediction, SequenceInfo
from .quota import ANONYMOUS, SequenceQuota
from .runtime import CostModel, OnnxModel
from .sequences import SequenceState, SequenceStore
from .settings import ServerSettings
from .snapshot import (
    LastPrediction,
    Snapshot,
    SnapshotCodec,
    SnapshotHeader,
    StateSpec,
    model_fingerprint,
)
from .tokenize import TextEncoder, check_texts, too_long

__all__ = ["EngineOptions", "ModelEngine", "Prediction"]

log = logging.getLogger("rnnserve.server.engine")

_stream_ids = itertools.count(1)


class ModelEngine(StepAwaiting):
    """Tokenizer, ORT sessions, scheduler and sequence store of one model version.

    Life cycle: construct (reads files, cheap) -> ``load()`` (blocking: sessions, warm-up;
    run it in a thread) -> ``start()`` on the serving loop -> serve -> (``retire()``: no new
    sequences or stateless requests, open sequences go on) -> ``close()``.
    """

    def __init__(self, name: str, version: str, directory: Path,
                 config: model_config_pb2.ModelConfig, settings: ServerSettings,
                 telemetry=None, *, snapshots: SnapshotCodec | None = None,
                 quota: SequenceQuota | None = None) -> None:
        self.name = name
        self.version = version
        self.directory = Path(directory)
        self.config = config
        self.settings = settings
        self.telemetry = telemetry
        params = config_parameters(config)
        try:
            self.metadata = RepositoryMetadata.model_validate_json(
                (self.directory / METADATA_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"{self.directory / METADATA_FILE}: {exc}") from exc
        labels_path = self.directory / params.get("labels", LABELS_FILE)
        try:
            labels = [line.strip() for line in labels_path.read_text("utf-8").splitlines()
                      if line.strip()]
        except OSError as exc:
            raise RepositoryError(f"cannot read {labels_path}: {exc}") from exc
        if labels != list(self.metadata.labels) or len(labels) != self.metadata.num_labels:
            raise RepositoryError(f"{labels_path} does not match metadata labels "
                                  f"{self.metadata.labels}")
        self.labels: list[str] = labels
        self.options = EngineOptions.resolve(config, settings)
        tokenizer_path = self.directory / params.get("tokenizer", TOKENIZER_FILE)
        try:
            self.encoder = TextEncoder(tokenizer_path, vocab_size=self.metadata.vocab_size)
        except Exception as exc:
            raise RepositoryError(f"cannot load tokenizer {tokenizer_path}: {exc}") from exc
        self.streaming = not self.metadata.bidirectional
        self.store = SequenceStore(
            capacity=self.options.max_sequences if self.streaming else 1,
            state_count=len(self.metadata.state_names),
            state_shape=self.metadata.state_shape,
            idle_seconds=self.options.sequence_idle_seconds,
            evict_idle=self.options.evict_idle_sequences, telemetry=telemetry, quota=quota)
        self.snapshots = snapshots if snapshots is not None else SnapshotCodec()
        self.fingerprint = ""            # SHA-256 of model.onnx, set by load()
        self.models: list[OnnxModel] = []
        self.cost_model: CostModel | None = None
        self.provider = ""
        self.ready = False
        self.retiring = False            # unloaded: only open sequences go on
        self.load_seconds = 0.0
        self.scheduler: Scheduler | None = None
        self.sequences: SequenceBatcher | None = None
        self._expiry: asyncio.Task | None = None

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    # -- life cycle ---------------------------------------------------------------------

    def load(self) -> None:
        """Create one ORT session per instance and warm each up (blocking)."""
        started = time.perf_counter()
        options = self.options
        path = self.directory / ONNX_FILE
        self.fingerprint = model_fingerprint(path)
        warm = 0.0
        for _ in range(options.instances):
            model = OnnxModel(path, self.metadata, self.settings,
                              max_batch_size=options.max_batch_size,
                              sessions=options.instances)
            if options.warmup:
                warm += model.warmup(warmup_batch_sizes(options.max_batch_size),
                                     [min(16, options.chunk_length)])
                warm += model.warmup([options.max_batch_size], [options.chunk_length])
            if options.length_split and self.cost_model is None:
                self.cost_model = model.calibrate(options.max_batch_size, options.chunk_length)
            self.models.append(model)
        self.provider = self.models[0].provider
        self.load_seconds = time.perf_counter() - started
        if self.telemetry is not None:
            self.telemetry.set_load_seconds(self.load_seconds)
            self.telemetry.set_execution_providers(self.provider)
        log_event(log, "model_loaded", model=self.name, version=self.version,
                  provider=self.provider, instances=options.instances,
                  max_batch_size=options.max_batch_size, chunk_length=options.chunk_length,
                  max_queue_delay_us=round(options.max_queue_delay_s * 1e6),
                  state_bytes_per_sequence=self.store.state_bytes,
                  cost_model=None if self.cost_model is None else {
                      key: round(value * 1e6, 2) for key, value in
                      (("call_us", self.cost_model.call), ("step_us", self.cost_model.step),
                       ("row_step_us", self.cost_model.row_step))},
                  warmup_seconds=round(warm, 3), seconds=round(self.load_seconds, 3))

    def start(self) -> None:
        """Start the workers and the expiry sweep on the running loop; then ready."""
        options = self.options
        executors = [BatchExecutor(model, max_batch_size=options.max_batch_size,
                                   chunk_length=options.chunk_length,
                                   pad_id=self.metadata.pad_id, pool=self.store.pool,
                                   cost_model=self.cost_model, encoder=self.encoder)
                     for model in self.models]
        self.scheduler = Scheduler(executors, max_batch_size=options.max_batch_size,
                                   max_queue_delay_s=options.max_queue_delay_s,
                                   adaptive=options.adaptive,
                                   max_queue_size=options.max_queue_size,
                                   telemetry=self.telemetry, name=self.key)
        self.sequences = SequenceBatcher(self.scheduler, self.store, self.labels,
                                         max_pending=options.max_pending_chunks,
                                         snapshot=self._snapshot)
        self.scheduler.start()
        if self.streaming:
            self._expiry = asyncio.get_running_loop().create_task(
                self._expire_loop(), name=f"rnnserve-expiry-{self.key}")
        self.ready = True

    def retire(self) -> None:
        """This version is unloaded: refuse new sequences and stateless requests from now
        on (UNAVAILABLE); steps of open sequences keep being served until ``close()``."""
        self.retiring = True

    @property
    def open_sequences(self) -> int:
        return len(self.store)

    def _check_new(self, what: str) -> None:
        if self.retiring:
            raise Unavailable(f"model {self.key} is unloaded: it only finishes its open "
                              f"sequences and takes no new {what}; send it to a served "
                              "version")

    async def close(self, timeout: float | None = None) -> None:
        """Finish admitted work (up to ``timeout``), then stop workers and free state."""
        self.ready = False
        if self.scheduler is None:
            return
        await self.scheduler.wait_idle(timeout)
        if self._expiry is not None:
            self._expiry.cancel()
        for state in self.store.close_all("ended"):
            self.sequences.cancel_pending(state, Unavailable("the server is shutting down"))
        await self.scheduler.close()

    async def _expire_loop(self) -> None:
        period = min(1.0, self.options.sequence_idle_seconds / 4)
        while True:
            await asyncio.sleep(period)
            self.store.expire()

    def _check_ready(self) -> None:
        if not self.ready:
            raise Unavailable(f"model {self.key} is not ready (loading or shutting down); "
                              "retry shortly")

    # -- stateless ----------------------------------------------------------------------

    def submit_classify(self, texts: Sequence[str], *, api: str | None = "text"
                        ) -> asyncio.Future:
        """Accept ``texts`` (1..max_texts_per_request non-empty texts) now; the returned
        future resolves to their Predictions in order. Raises (without side effects) when
        the request is refused. ``api`` None: the caller reports the request
        (server/accounting.py), not the engine."""
        started = time.perf_counter()
        try:
            self._check_count(len(texts))
            self._check_new("requests")
            check_texts(texts, self.options.max_text_length)
            scheduler = self.scheduler
            future = asyncio.get_running_loop().create_future()
            request = BatchRequest(future, len(texts), self.labels)
            scheduler.admit(len(texts))
        except ServingError as exc:
            self._finished(api, "unary", exc.code, started, len(texts))
            raise
        many = len(texts) > 1
        for index, text in enumerate(texts):      # tokenized by the worker, batched
            scheduler.submit(Row(None, request, index, text=text, many=many))
        self._track(future, api, "unary", started, len(texts))
        return future

    async def classify(self, texts: Sequence[str], *, api: str = "text") -> list[Prediction]:
        """``await submit_classify(...)``: Predictions for ``texts``, in order."""
        return await self.submit_classify(texts, api=api)

    def _check_count(self, n: int) -> None:
        self._check_ready()
        if n == 0:
            raise InvalidArgument("no texts in the request; send at least one")
        if n > self.options.max_texts_per_request:
            raise InvalidArgument(f"{n} texts in one request; at most "
                                  f"{self.options.max_texts_per_request} are allowed, split "
                                  "the request")

    # -- sequences ----------------------------------------------------------------------

    def new_sequence_id(self) -> Hashable:
        """A fresh server-side sequence id (used by the text API: one stream = one id)."""
        return StreamKey(("stream", next(_stream_ids)))

    def submit_step(self, sequence_id: Hashable, text: str | None = None, *,
                    start: bool = False, end: bool = False,
                    restart: bool = False, api: str | None = "text", client: str = ANONYMOUS,
                    export: bool = False) -> asyncio.Future:
        """Accept one chunk of a sequence now; the returned future resolves to the running
        Prediction after it. Raises (without side effects) when the chunk is refused.

        Calls for one sequence are answered in call order, so a client may pipeline.
        ``start`` opens ``sequence_id`` (ALREADY_EXISTS if open, unless ``restart``, which
        zeroes its state before this chunk); otherwise the sequence must be open
        (NOT_FOUND). ``end`` closes it after this chunk. ``text`` may be empty only with
        ``end`` on a sequence that has seen text. ``client`` is charged for a sequence this
        call opens (per-client quota). With ``export`` the Prediction carries a snapshot of
        the state after this chunk.
        """
        started = time.perf_counter()
        try:
            future = self._submit_step(sequence_id, text, start, end, restart, client, export)
        except ServingError as exc:
            self._finished(api, "stream", exc.code, started, 1)
            raise
        self._track(future, api, "stream", started, 1)
        return future

    def _submit_step(self, sequence_id: Hashable, text: str | None,
                     start: bool, end: bool, restart: bool, client: str,
                     export: bool) -> asyncio.Future:
        """The body of ``submit_step``: validate, open or find the sequence, enqueue."""
        self._check_streaming()
        if not text or text.isspace():
            text = None
        elif len(text) > self.options.max_text_length:
            raise InvalidArgument(too_long("the chunk", len(text), self.options.max_text_length,
                                           "characters"))
        if text is None and (start or not end):
            what = "the first chunk" if start else "a chunk without end"
            raise InvalidArgument(f"{what} has no tokens (empty or only whitespace); send "
                                  "text, or set end to finish the sequence")
        store = self.store
        opened = None
        reset = False
        if start:
            self._check_new("sequences")
            state = store.find(sequence_id)
            if state is not None and restart:
                reset = True
            else:
                state = opened = store.open(sequence_id, client)
        else:
            state = store.get(sequence_id)
        future = asyncio.get_running_loop().create_future()
        try:
            self.sequences.submit(state, future, text=text, end=end, reset=reset,
                                  export=export)
        except BaseException:
            if opened is not None:
                store.close(opened, "ended")
            raise
        return future

    def end_sequence(self, sequence_id: Hashable, *, why: str = "ended") -> None:
        """Close ``sequence_id`` now (idempotent): queued chunks fail, state is freed as soon
        as no chunk of it is running."""
        state = self.store.find(sequence_id)
        if state is None:
            return
        self.sequences.cancel_pending(state, _ended_error(sequence_id))
        self.store.close(state, why)

    def _check_streaming(self) -> None:
        self._check_ready()
        if not self.streaming:
            raise FailedPrecondition(
                f"model {self.key} is bidirectional: it reads every text backwards as well, "
                "so it cannot run on a stream of chunks; use Classify with the whole text")

    # -- state snapshots ----------------------------------------------------------------

    def export_sequence(self, sequence_id: Hashable, *, release: bool = False
                        ) -> tuple[bytes, SequenceState]:
        """Snapshot of the open, idle sequence ``sequence_id`` (and its table entry). With
        ``release`` the sequence is closed afterwards (moved), else it stays open."""
        self._check_streaming()
        state = self.store.get(sequence_id)
        if state.busy or state.pending:
            raise FailedPrecondition(
                f"sequence {sequence_id!r} has {len(state.pending) + state.busy} chunk(s) "
                "in flight; export it after their responses arrive")
        blob = self._snapshot(state)
        if release:
            self.store.close(state, "exported")
        else:
            self.store.touch(state)
        return blob, state

    def import_sequence(self, sequence_id: Hashable, snapshot: Snapshot, *,
                        client: str = ANONYMOUS) -> SequenceState:
        """Open ``sequence_id`` from a decoded snapshot of this model file. Raises without
        side effects: FAILED_PRECONDITION for another model, ALREADY_EXISTS if open,
        RESOURCE_EXHAUSTED when the pool or the client's quota is full."""
        self._check_streaming()
        self._check_new("sequences")
        self.check_snapshot(snapshot)
        if self.store.find(sequence_id) is not None:
            raise AlreadyExists(f"sequence {sequence_id!r} is already open here; end it "
                                "first or import under another id")
        header = snapshot.header
        state = self.store.open(sequence_id, client)
        for pool, array in zip(self.store.pool, snapshot.states, strict=True):
            pool[state.slot] = array
        state.fresh = False
        state.tokens = header.tokens
        state.chunks = header.chunks
        if header.last is not None:
            probabilities = np.asarray(header.last.probabilities, dtype=np.float32)
            logits = np.asarray(header.last.logits, dtype=np.float32)
            index = header.last.label_index
            state.last = Prediction(self.labels[index], probabilities, logits, 0, index)
        if self.telemetry is not None:
            self.telemetry.sequence_event("imported")
        return state

    async def export_state(self, sequence_id: Hashable, *, release: bool = False
                           ) -> tuple[bytes, SequenceInfo]:
        """``export_sequence`` as the front-end API has it (awaitable, plain data back)."""
        blob, state = self.export_sequence(sequence_id, release=release)
        return blob, SequenceInfo(state.tokens, state.chunks, state.last)

    async def import_state(self, sequence_id: Hashable, snapshot: Snapshot, *,
                           client: str = ANONYMOUS) -> SequenceInfo:
        """``import_sequence`` as the front-end API has it (awaitable, plain data back)."""
        state = self.import_sequence(sequence_id, snapshot, client=client)
        return SequenceInfo(state.tokens, state.chunks, state.last)

    def check_snapshot(self, snapshot: Snapshot) -> None:
        """FAILED_PRECONDITION unless ``snapshot`` was made by this exact model file."""
        header = snapshot.header
        if header.fingerprint != self.fingerprint:
            raise FailedPrecondition(
                f"sequence state was exported from model {header.model} version "
                f"{header.version} (model file sha256 {header.fingerprint[:12]}...), not "
                f"from {self.key} (sha256 {self.fingerprint[:12]}...); import it where "
                "that model file is served")
        expected = [(n, self.metadata.state_shape) for n in self.metadata.state_names]
        got = [(spec.name, spec.shape) for spec in header.states]
        if got != expected:
            raise FailedPrecondition(f"sequence state tensors {got} do not match the model's "
                                     f"{expected}")
        last = header.last
        if last is not None and (last.label_index >= len(self.labels)
                                 or len(last.logits) != len(self.labels)
                                 or len(last.probabilities) != len(self.labels)):
            raise FailedPrecondition("sequence state's last prediction does not match the "
                                     f"model's {len(self.labels)} labels")

    def _snapshot(self, state: SequenceState) -> bytes:
        meta = self.metadata
        if state.fresh:       # restarted (or never stepped): the slot may hold stale values
            arrays = tuple(np.zeros(meta.state_shape, np.float32) for _ in self.store.pool)
        else:
            arrays = tuple(pool[state.slot] for pool in self.store.pool)
        last = state.last
        header = SnapshotHeader(
            model=self.name, version=self.version, fingerprint=self.fingerprint,
            cell=meta.cell,
            states=[StateSpec(name=n, shape=meta.state_shape) for n in meta.state_names],
            tokens=state.tokens, chunks=state.chunks,
            last=None if last is None else LastPrediction(
                label_index=int(last.label_index),
                logits=[float(x) for x in last.logits],
                probabilities=[float(x) for x in last.probabilities]),
            created_unix=time.time())
        return self.snapshots.encode(header, arrays)

    # -- description --------------------------------------------------------------------

    def entry(self) -> ModelEntry:
        """This version as front-end processes see it (server/catalog.py)."""
        return ModelEntry(name=self.name, version=self.version, labels=tuple(self.labels),
                          config=self.config.SerializeToString(), options=self.options,
                          streaming=self.streaming, ready=self.ready, provider=self.provider,
                          description=self.describe())

    def describe(self) -> dict:
        meta = self.metadata
        options = self.options
        return {
            "name": self.name, "version": self.version, "labels": list(self.labels),
            "cell": meta.cell, "vocab_size": meta.vocab_size, "embed_dim": meta.embed_dim,
            "hidden": meta.hidden, "layers": meta.layers, "bidirectional": meta.bidirectional,
            "precision": meta.precision, "state_bytes_per_sequence": self.store.state_bytes,
            "max_batch_size": options.max_batch_size, "chunk_length": options.chunk_length,
            "streaming": self.streaming,
            "max_open_sequences": options.max_sequences if self.streaming else 0,
            "sequence_idle_seconds": options.sequence_idle_seconds,
            "execution_provider": self.provider,
            "metrics": {**meta.metrics, **meta.validation},
        }

    def _track(self, future: asyncio.Future, api: str | None, kind: str, started: float,
               texts: int) -> None:
        if api is not None:
            report_when_settled(self.telemetry, future, api=api, kind=kind, started=started,
                                texts=texts)

    def _finished(self, api: str | None, kind: str, code, started: float, texts: int) -> None:
        if api is not None:
            report(self.telemetry, api=api, kind=kind, code=code, started=started, texts=texts)


def _ended_error(sequence_id) -> Aborted:
    return Aborted(f"sequence {sequence_id!s} was ended before this chunk ran")


def warmup_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two below ``max_batch_size``, and ``max_batch_size`` itself."""
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return sizes
