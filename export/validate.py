"""Export validation: the exported graph must behave like the checkpoint.

Checks (all on ONNX Runtime's CPU execution provider, which every machine has):

- ``parity``: ORT vs the torch module on a padded batch of real tokenized text of mixed
  lengths, once from the zero state and once from a random carried state. Figures: max
  |Δ logits| and max |Δ state|, absolute and scaled (``|Δ| / max(1, |reference|)``, the
  figure thresholds apply to: fp32 cannot be closer than a few ulps of a large logit).
- ``chunked``: each text fed in ``k`` chunks with the state carried between calls equals one
  pass over the whole text (logits and final state). Only meaningful for unidirectional
  models (a backward direction cannot be carried forward), so it is skipped for
  bidirectional ones.
- ``accuracy``: fraction of labelled texts whose argmax logit is the label, measured with ORT.

Thresholds are applied by the exporter; this module only measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Built-in sentences for parity checks when no data is given: varied length and wording.
PARITY_TEXTS = (
    "great",
    "This movie was terrible.",
    "An absolute delight from start to finish, I loved every minute of it!",
    "not good, not bad, just boring",
    "The acting is wooden, the plot makes no sense and the jokes fall flat every single time.",
    "wow",
    "I would happily watch it again with my friends and family.",
    (
        "A slow, muddled, overlong mess that wastes a talented cast on a script nobody could "
        "save; by the time the credits roll you will have checked your watch a dozen times and "
        "wondered why anyone thought this story needed two and a half hours to tell, let alone "
        "a sequel."
    ),
    "Surprisingly moving.",
    "Meh.",
    "the soundtrack is lovely but the pacing drags in the middle",
    "One of the best films of the year: smart, funny, and beautifully shot.",
)


@dataclass(frozen=True)
class Batch:
    """A padded batch: ``ids [B, T]`` int64 padded at the end, ``lengths [B]`` int64 ≥ 1."""

    ids: np.ndarray
    lengths: np.ndarray


def pad_batch(token_lists: Sequence[Sequence[int]], pad_id: int) -> Batch:
    lengths = np.array([len(t) for t in token_lists], dtype=np.int64)
    if lengths.size == 0 or lengths.min() < 1:
        raise ValueError("every row needs at least one token")
    ids = np.full((len(token_lists), int(lengths.max())), pad_id, dtype=np.int64)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = tokens
    return Batch(ids, lengths)


class OrtRunner:
    """An ORT CPU session for one graph with the §2 signature; state ``None`` means zeros."""

    def __init__(
        self, model_bytes: bytes, state_names: Sequence[str], state_shape: tuple[int, int]
    ):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # No busy-waiting worker threads: validation must not fight other processes for CPU.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        self.state_names = list(state_names)
        self.state_shape = state_shape

    def zero_state(self, batch: int) -> tuple[np.ndarray, ...]:
        return tuple(
            np.zeros((batch, *self.state_shape), dtype=np.float32) for _ in self.state_names
        )

    def run(
        self, batch: Batch, state: tuple[np.ndarray, ...] | None = None
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        state = state if state is not None else self.zero_state(len(batch.lengths))
        feed = {"input_ids": batch.ids, "lengths": batch.lengths}
        feed.update(zip(self.state_names, state, strict=True))
        logits, *new_state = self.session.run(None, feed)
        return logits, tuple(new_state)


def run_torch(model, batch: Batch, state: tuple[np.ndarray, ...] | None = None):
    """The torch module's (logits, state) as numpy, in eval mode without gradients."""
    import torch

    threads = torch.get_num_threads()
    # Validation batches are small: one thread is as fast and immune to oversubscribed CPUs
    # (torch's OpenMP pool slows down by 100x when other processes hold the cores).
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            torch_state = None if state is None else tuple(torch.from_numpy(s) for s in state)
            logits, new_state = model(
                torch.from_numpy(batch.ids), torch.from_numpy(batch.lengths), torch_state
            )
    finally:
        torch.set_num_threads(threads)
    return logits.numpy(), tuple(s.contiguous().numpy() for s in new_state)


def _max_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b, strict=True))


def _max_scaled_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Max of ``|Δ| / max(1, |reference|)``: absolute error for values up to 1, relative above.

    fp32 carries ~7 significant digits, so two correct implementations that sum in a
    different order differ by a few ulps of the value; for a logit of 40 one ulp is 3.8e-6.
    """
    return max(
        float(np.max(np.abs(x.astype(np.float64) - y) / np.maximum(1.0, np.abs(y))))
        for x, y in zip(a, b, strict=True)
    )


def parity(
    model, runner: OrtRunner, token_lists: Sequence[Sequence[int]], pad_id: int, seed: int = 0
) -> dict[str, float]:
    """Max |Δ| between torch and ORT for logits and state, zero and random initial state."""
    batch = pad_batch(token_lists, pad_id)
    ref_logits, ref_state = run_torch(model, batch)
    logits, state = runner.run(batch)
    rng = np.random.default_rng(seed)
    zeros = runner.zero_state(len(batch.lengths))
    carried = tuple(rng.uniform(-0.9, 0.9, size=z.shape).astype(np.float32) for z in zeros)
    ref_logits_c, ref_state_c = run_torch(model, batch, carried)
    logits_c, state_c = runner.run(batch, carried)
    return {
        "max_abs_logit_diff": max(
            _max_diff([logits], [ref_logits]), _max_diff([logits_c], [ref_logits_c])
        ),
        "max_abs_state_diff": max(_max_diff(state, ref_state), _max_diff(state_c, ref_state_c)),
        "max_scaled_logit_diff": max(
            _max_scaled_diff([logits], [ref_logits]), _max_scaled_diff([logits_c], [ref_logits_c])
        ),
        "max_scaled_state_diff": max(
            _max_scaled_diff(state, ref_state), _max_scaled_diff(state_c, ref_state_c)
        ),
        "max_abs_logit": float(max(np.abs(ref_logits).max(), np.abs(ref_logits_c).max())),
    }


def chunked_vs_whole(
    runner: OrtRunner, token_lists: Sequence[Sequence[int]], pad_id: int, chunks: int = 3
) -> dict[str, float]:
    """Max |Δ| between one pass and ``chunks`` calls with carried state (same ORT graph).

    Row ``i`` is cut into ``chunks`` pieces of near-equal size (rows shorter than ``chunks``
    tokens are cut into single tokens) and all rows advance together; a row whose pieces
    are used up keeps its state unchanged by not being part of later calls.
    """
    whole_logits, whole_state = runner.run(pad_batch(token_lists, pad_id))
    pieces = [np.array_split(np.asarray(t), min(chunks, len(t))) for t in token_lists]
    state = runner.zero_state(len(token_lists))
    logits = np.zeros_like(whole_logits)
    for step in range(max(len(p) for p in pieces)):
        rows = [i for i, p in enumerate(pieces) if step < len(p)]
        step_state = tuple(s[rows] for s in state)
        out_logits, out_state = runner.run(
            pad_batch([pieces[i][step] for i in rows], pad_id), step_state
        )
        logits[rows] = out_logits
        for full, part in zip(state, out_state, strict=True):
            full[rows] = part
    return {
        "chunked_max_abs_logit_diff": _max_diff([logits], [whole_logits]),
        "chunked_max_abs_state_diff": _max_diff(state, whole_state),
        "chunked_max_scaled_logit_diff": _max_scaled_diff([logits], [whole_logits]),
        "chunked_max_scaled_state_diff": _max_scaled_diff(state, whole_state),
    }


def accuracy(
    runner: OrtRunner,
    token_lists: Sequence[Sequence[int]],
    labels: Sequence[int],
    pad_id: int,
    batch_size: int = 64,
) -> float:
    """Top-1 accuracy of the graph on labelled token lists (sorted by length to pad less)."""
    order = np.argsort([len(t) for t in token_lists], kind="stable")
    correct = 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        logits, _ = runner.run(pad_batch([token_lists[i] for i in rows], pad_id))
        correct += int(np.sum(np.argmax(logits, axis=1) == np.asarray(labels)[rows]))
    return correct / max(len(token_lists), 1)
