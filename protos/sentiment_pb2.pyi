# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("texts", "model", "version")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    model: str
    version: str
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "label_index", "probabilities", "logits", "tokens")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    label: str
    label_index: int
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    logits: _containers.RepeatedScalarFieldContainer[float]
    tokens: int
    def __init__(self, label: _Optional[str] = ..., label_index: _Optional[int] = ..., probabilities: _Optional[_Iterable[float]] = ..., logits: _Optional[_Iterable[float]] = ..., tokens: _Optional[int] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "version", "labels", "predictions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class StreamClassifyRequest(_message.Message):
    __slots__ = ("text", "model", "version", "end", "reset", "resume_state", "export_state")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    RESUME_STATE_FIELD_NUMBER: _ClassVar[int]
    EXPORT_STATE_FIELD_NUMBER: _ClassVar[int]
    text: str
    model: str
    version: str
    end: bool
    reset: bool
    resume_state: bytes
    export_state: bool
    def __init__(self, text: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., end: bool = ..., reset: bool = ..., resume_state: _Optional[bytes] = ..., export_state: bool = ...) -> None: ...

class StreamClassifyResponse(_message.Message):
    __slots__ = ("prediction", "chunk_index", "total_tokens", "model", "version", "labels", "sequence_id", "end", "state")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    prediction: Prediction
    chunk_index: int
    total_tokens: int
    model: str
    version: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    sequence_id: str
    end: bool
    state: bytes
    def __init__(self, prediction: _Optional[_Union[Prediction, _Mapping]] = ..., chunk_index: _Optional[int] = ..., total_tokens: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., sequence_id: _Optional[str] = ..., end: bool = ..., state: _Optional[bytes] = ...) -> None: ...

class SequenceRef(_message.Message):
    __slots__ = ("sequence_id", "sequence_name")
    SEQUENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NAME_FIELD_NUMBER: _ClassVar[int]
    sequence_id: int
    sequence_name: str
    def __init__(self, sequence_id: _Optional[int] = ..., sequence_name: _Optional[str] = ...) -> None: ...

class ExportSequenceRequest(_message.Message):
    __slots__ = ("model", "version", "sequence", "release")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    sequence: SequenceRef
    release: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., sequence: _Optional[_Union[SequenceRef, _Mapping]] = ..., release: bool = ...) -> None: ...

class ExportSequenceResponse(_message.Message):
    __slots__ = ("state", "model", "version", "total_tokens", "chunks", "released")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    state: bytes
    model: str
    version: str
    total_tokens: int
    chunks: int
    released: bool
    def __init__(self, state: _Optional[bytes] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., total_tokens: _Optional[int] = ..., chunks: _Optional[int] = ..., released: bool = ...) -> None: ...

class ImportSequenceRequest(_message.Message):
    __slots__ = ("model", "version", "sequence", "state")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    sequence: SequenceRef
    state: bytes
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., sequence: _Optional[_Union[SequenceRef, _Mapping]] = ..., state: _Optional[bytes] = ...) -> None: ...

class ImportSequenceResponse(_message.Message):
    __slots__ = ("model", "version", "total_tokens", "chunks", "prediction")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    total_tokens: int
    chunks: int
    prediction: Prediction
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., total_tokens: _Optional[int] = ..., chunks: _Optional[int] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersionStatus(_message.Message):
    __slots__ = ("name", "version", "ready", "latest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    ready: bool
    latest: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., ready: bool = ..., latest: bool = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ModelMetadata(_message.Message):
    __slots__ = ("name", "version", "versions", "labels", "cell", "vocab_size", "embed_dim", "hidden", "layers", "bidirectional", "precision", "state_bytes_per_sequence", "max_batch_size", "chunk_length", "streaming", "max_open_sequences", "sequence_idle_seconds", "execution_provider", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBED_DIM_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_PER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_LENGTH_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    MAX_OPEN_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    cell: str
    vocab_size: int
    embed_dim: int
    hidden: int
    layers: int
    bidirectional: bool
    precision: str
    state_bytes_per_sequence: int
    max_batch_size: int
    chunk_length: int
    streaming: bool
    max_open_sequences: int
    sequence_idle_seconds: float
    execution_provider: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[str]] = ..., cell: _Optional[str] = ..., vocab_size: _Optional[int] = ..., embed_dim: _Optional[int] = ..., hidden: _Optional[int] = ..., layers: _Optional[int] = ..., bidirectional: bool = ..., precision: _Optional[str] = ..., state_bytes_per_sequence: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., chunk_length: _Optional[int] = ..., streaming: bool = ..., max_open_sequences: _Optional[int] = ..., sequence_idle_seconds: _Optional[float] = ..., execution_provider: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...
