"""Verdicts of the search report, computed from the collected numbers, and the number formats
the report prints them in.

Invariants
----------
* Every sentence of ``conclude`` and every claim verdict of ``judge_claims`` is a function of
  the results dict alone; nothing is written by hand, and the thresholds used for "similar"
  (``SIMILAR``) and "about a quarter" (``QUARTER``) are stated next to each verdict.
* Claims are judged on controlled comparisons (equal sizes, identical hyperparameters, CPU
  time); comparisons of the two winners, chosen at different settings, are context only.
* Every number format (``pct``, ``count``, ``seconds``, ``mib``, ``ms``) maps ``None`` to
  ``"n/a"`` and never raises on a missing value.
"""

from __future__ import annotations

#: Relative differences at or below this are called "similar" (time per epoch, loss).
SIMILAR = 0.05
#: "About a quarter fewer" holds for a total saving in this range.
QUARTER = (0.20, 0.30)


# --------------------------------------------------------------------------- formats


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"


def count(value: int | None) -> str:
    if value is None:
        return "n/a"
    if value >= 1_000_000:
        return f"{value / 1e6:.2f} M"
    if value >= 10_000:
        return f"{value / 1e3:.1f} k"
    return str(value)


def seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MiB"


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g} ms"


def name(cell: str) -> str:
    return cell.upper()


def relative(a: float, b: float) -> float:
    """How much smaller ``a`` is than ``b`` as a fraction of ``b`` (negative: larger)."""
    return (b - a) / b if b else 0.0


# --------------------------------------------------------------------------- verdicts


def best_cells(results: dict) -> dict[str, dict]:
    return {cell: data["best"] for cell, data in results["cells"].items() if data.get("best")}


def _trial_counts(results: dict) -> str:
    parts = []
    for cell, data in results["cells"].items():
        c = data["counts"]
        parts.append(f"{name(cell)} {c['complete'] + c['pruned']} trials "
                     f"({c['complete']} completed, {c['pruned']} pruned)")
    return ", ".join(parts)


def _same_sizes(first: dict, second: dict) -> bool:
    keys = ("embed_dim", "hidden", "layers")
    return all(first["params"].get(k) == second["params"].get(k) for k in keys)


def conclude(results: dict) -> list[str]:
    """Sentences comparing the best models, each computed from ``results``."""
    best = best_cells(results)
    epochs = results["settings"]["epochs"]
    lines = [f"Budget: {_trial_counts(results)}, at most {epochs} epoch(s) each."]
    if len(best) < 2:
        for cell, b in best.items():
            lines.append(f"Only {name(cell)} has a completed trial: validation accuracy "
                         f"{pct(b['val_accuracy'])} with {count(b['parameters'])} parameters; "
                         f"no comparison is possible.")
        if not best:
            lines.append("No trial completed; nothing to compare.")
        return lines

    (a, best_a), (b, best_b) = sorted(best.items(), key=lambda kv: -kv[1]["val_accuracy"])
    gap = best_a["val_accuracy"] - best_b["val_accuracy"]
    sentence = (f"Accuracy: {name(a)} wins on validation accuracy, {pct(best_a['val_accuracy'])} "
                f"vs {pct(best_b['val_accuracy'])} (+{100 * gap:.1f} points")
    significance = results.get("significance")
    if significance:
        p = significance["p_value"]
        verdict = "significant at the 5 % level" if p < 0.05 else "not significant at the 5 % level"
        sentence += (f"; exact McNemar test on the {significance['examples']} validation examples: "
                     f"p = {p:.3g}, {verdict}")
    lines.append(sentence + ").")
    if gap == 0:
        lines[-1] = (f"Accuracy: a tie, both best models reach {pct(best_a['val_accuracy'])} "
                     f"validation accuracy.")
    tests = {cell: x["test"] for cell, x in best.items() if x.get("test")}
    if len(tests) == 2:
        (ta, qa), (tb, qb) = sorted(tests.items(), key=lambda kv: -kv[1]["accuracy"])
        lines.append(f"Test: {name(ta)} {pct(qa['accuracy'])} vs {name(tb)} {pct(qb['accuracy'])} "
                     f"accuracy on {qa['examples']} test examples "
                     f"(macro-F1 {qa['macro_f1']:.3f} vs {qb['macro_f1']:.3f}).")
    pairs = identical_pairs(results)
    if pairs:
        gaps = [p["gru_val_accuracy"] - p["lstm_val_accuracy"] for p in pairs]
        wins = sum(1 for gap in gaps if gap > 0)
        losses = sum(1 for gap in gaps if gap < 0)
        mean = sum(gaps) / len(gaps)
        lines.append(
            f"Paired: at identical hyperparameters ({len(pairs)} pairs of completed trials drawn "
            f"alike for both cells) the GRU was more accurate in {wins}, less accurate in "
            f"{losses}; mean difference {100 * mean:+.1f} points (GRU minus LSTM)."
        )
    small, large = sorted(best, key=lambda cell: best[cell]["parameters"])
    lines.append(
        f"Size: the best {name(small)} is smaller, {count(best[small]['parameters'])} vs "
        f"{count(best[large]['parameters'])} parameters "
        f"({pct(relative(best[small]['parameters'], best[large]['parameters']))} fewer)"
        + (" at the same sizes." if _same_sizes(best[small], best[large]) else
           "; the winners have different sizes, see the claims below for equal sizes.")
    )
    latency = {cell: x["latency"] for cell, x in best.items() if x.get("latency")}
    if len(latency) == 2:
        fast, slow = sorted(latency, key=lambda cell: latency[cell]["batch1_median_ms"])
        lf, ls = latency[fast], latency[slow]
        engines = sorted({lf["engine"], ls["engine"]})
        lines.append(
            f"Speed: the best {name(fast)} answers a single text faster, "
            f"{ms(lf['batch1_median_ms'])} vs {ms(ls['batch1_median_ms'])} median latency "
            f"({ls['batch1_median_ms'] / lf['batch1_median_ms']:.2f}x); at batch {lf['batch_size']} "
            f"the {name(fast)} serves {lf['throughput_per_s']:.0f}/s vs {name(slow)} "
            f"{ls['throughput_per_s']:.0f}/s texts (engine: {'; '.join(engines)})."
        )
    lines.append(_training_sentence(best, pretrain_epochs(results)))
    return lines


def pretrain_epochs(results: dict) -> int:
    """LM pretraining epochs every trial ran first (0 for searches made before it existed).
    A trial's CPU time includes them, so its CPU time per epoch carries their share."""
    return int(results.get("settings", {}).get("space", {}).get("lm_pretrain_epochs", 0))


def _training_sentence(best: dict[str, dict], lm_epochs: int) -> str:
    """Cost per epoch of the two winners: CPU time when both have it (immune to other
    processes' load), else wall time; wall times are always given for reference."""
    use_cpu = all(b.get("cpu_seconds_per_epoch") for b in best.values())
    key = "cpu_seconds_per_epoch" if use_cpu else "seconds_per_epoch"
    cheap, costly = sorted(best, key=lambda cell: best[cell][key])
    ratio = best[costly][key] / best[cheap][key] if best[cheap][key] else float("nan")
    unit = "CPU time" if use_cpu else "wall time"
    if use_cpu and lm_epochs:
        unit += f" (the trial's, its {lm_epochs} LM pretraining epoch(s) included)"
    return (
        f"Training: an epoch of the best {name(cheap)} costs {seconds(best[cheap][key])} of "
        f"{unit} vs {seconds(best[costly][key])} for the best {name(costly)} ({ratio:.2f}x); "
        f"wall time per epoch {seconds(best[cheap]['seconds_per_epoch'])} vs "
        f"{seconds(best[costly]['seconds_per_epoch'])} and to the best epoch "
        f"{seconds(best[cheap]['seconds_to_best'])} vs {seconds(best[costly]['seconds_to_best'])}"
        f" (wall times include the machine's load)."
    )


def judge_claims(results: dict) -> dict[str, dict]:
    """The three common claims about GRU vs LSTM, each with evidence and a verdict."""
    return {
        "quarter_fewer_parameters": _claim_parameters(results),
        "faster_per_epoch": _claim_speed(results),
        "similar_or_lower_loss": _claim_loss(results),
    }


def _claim_parameters(results: dict) -> dict:
    rows = []
    for entry in results.get("equal_size", []):
        p = entry["parameters"]
        rows.append({
            "sizes": entry["sizes"], "from": entry["from"],
            "lstm": p["lstm"]["total"], "gru": p["gru"]["total"],
            "recurrent_fewer": relative(p["gru"]["recurrent"], p["lstm"]["recurrent"]),
            "total_fewer": relative(p["gru"]["total"], p["lstm"]["total"]),
            "embedding_share_lstm": p["lstm"]["embedding"] / p["lstm"]["total"],
        })
    if not rows:
        return {"verdict": "not measured", "rows": rows, "summary": "no best models to size"}
    low = min(r["total_fewer"] for r in rows)
    high = max(r["total_fewer"] for r in rows)
    holds = QUARTER[0] <= low and high <= QUARTER[1]
    verdict = "holds" if holds else "holds only for the recurrent layers"
    summary = (
        f"The recurrent layers of a GRU have exactly 25.0 % fewer parameters than an LSTM's at "
        f"the same sizes (3 gate blocks instead of 4). For the whole model the saving at the "
        f"sizes compared is {pct(low)}" + ("" if low == high else f" to {pct(high)}")
        + f", because the embedding and the head do not depend on the cell (the embedding is "
        f"{pct(max(r['embedding_share_lstm'] for r in rows))} of the LSTM at most). "
        f"Verdict ('about a quarter' = {pct(QUARTER[0], 0)} to {pct(QUARTER[1], 0)} of the "
        f"whole model): {verdict}."
    )
    return {"verdict": verdict, "rows": rows, "summary": summary}


def _speed_row(source: str, controlled: bool, sizes: dict, cpu: tuple, wall: tuple) -> dict:
    """One LSTM/GRU timing comparison; ``gru_faster`` uses CPU time when both have it."""
    basis = cpu if None not in cpu else wall
    return {"source": source, "controlled": controlled, "sizes": sizes,
            "basis": "cpu" if basis is cpu else "wall",
            "lstm": basis[0], "gru": basis[1], "lstm_wall": wall[0], "gru_wall": wall[1],
            "gru_faster": relative(basis[1], basis[0])}


def _claim_speed(results: dict) -> dict:
    """Verdict from the controlled equal-size benchmark (CPU time); search pairs are context."""
    rows = []
    for entry in results.get("equal_size", []):
        lstm, gru = entry["speed"]["lstm"], entry["speed"]["gru"]
        rows.append(_speed_row(
            f"micro-benchmark at the sizes of {entry['from']}", True, entry["sizes"],
            (lstm.get("cpu_seconds_per_epoch"), gru.get("cpu_seconds_per_epoch")),
            (lstm["seconds_per_epoch"], gru["seconds_per_epoch"])))
    # A trial's CPU time per epoch carries its LM pretraining's share, which differs between
    # a trial pruned after one epoch and one that ran them all: compare wall times then.
    cpu_comparable = not pretrain_epochs(results)
    for pair in results.get("matched_pairs", []):
        cpu = (pair.get("lstm_cpu_seconds_per_epoch"), pair.get("gru_cpu_seconds_per_epoch"))
        rows.append(_speed_row(
            f"search trials LSTM #{pair['lstm_trial']} / GRU #{pair['gru_trial']}", False,
            pair["sizes"], cpu if cpu_comparable else (None, None),
            (pair["lstm_seconds_per_epoch"], pair["gru_seconds_per_epoch"])))
    controlled = [r for r in rows if r["controlled"]]
    if not controlled:
        return {"verdict": "not measured", "rows": rows, "summary": "no equal-size measurement"}
    faster = sum(1 for r in controlled if r["gru_faster"] > SIMILAR)
    slower = sum(1 for r in controlled if r["gru_faster"] < -SIMILAR)
    if faster == len(controlled):
        verdict = "holds"
    elif slower == len(controlled):
        verdict = "does not hold (GRU slower)"
    elif faster == 0 and slower == 0:
        verdict = "no clear difference"
    else:
        verdict = "mixed"
    summary = (
        "Controlled benchmark: " + "; ".join(
            f"{r['sizes']['embed_dim']}/{r['sizes']['hidden']}/{r['sizes']['layers']}/"
            f"{r['sizes']['batch_size']}: GRU {pct(abs(r['gru_faster']))} "
            f"{'faster' if r['gru_faster'] >= 0 else 'slower'}" for r in controlled)
        + f" ('no clear difference' = within {pct(SIMILAR, 0)}). Verdict: {verdict}."
    )
    pairs = [r for r in rows if not r["controlled"]]
    if pairs:
        median = sorted(r["gru_faster"] for r in pairs)[len(pairs) // 2]
        summary += (
            f" Context from {len(pairs)} pairs of search trials with identical sizes (full epochs "
            f"with validation, other hyperparameters may differ): GRU faster by more than {pct(SIMILAR, 0)} in "
            f"{sum(1 for r in pairs if r['gru_faster'] > SIMILAR)}, slower by more than that in "
            f"{sum(1 for r in pairs if r['gru_faster'] < -SIMILAR)}, median "
            f"{pct(abs(median))} {'faster' if median >= 0 else 'slower'}."
        )
    return {"verdict": verdict, "rows": rows, "summary": summary}


def identical_pairs(results: dict) -> list[dict]:
    """Matched search trials with identical hyperparameters that both completed."""
    return [p for p in results.get("matched_pairs", [])
            if p.get("identical_hyperparameters")
            and p.get("lstm_state") == p.get("gru_state") == "COMPLETE"]


def _claim_loss(results: dict) -> dict:
    """Verdict from controlled comparisons (identical hyperparameters, equal-size benchmark);
    the best trials, chosen by accuracy at different settings, are context."""
    best = best_cells(results)
    rows = []
    for pair in identical_pairs(results):
        if pair.get("lstm_val_loss") is not None and pair.get("gru_val_loss") is not None:
            rows.append({"source": f"search trials LSTM #{pair['lstm_trial']} / GRU "
                                   f"#{pair['gru_trial']} (identical hyperparameters), "
                                   f"validation loss at the best epoch", "controlled": True,
                         "lstm": pair["lstm_val_loss"], "gru": pair["gru_val_loss"]})
    for entry in results.get("equal_size", []):
        rows.append({"source": f"equal-size micro-benchmark ({entry['from']}), training loss "
                               f"over the last quarter of {entry['speed']['lstm']['steps_measured']}"
                               f" steps", "controlled": True,
                     "lstm": entry["speed"]["lstm"]["final_loss"],
                     "gru": entry["speed"]["gru"]["final_loss"]})
    if {"lstm", "gru"} <= set(best) and all(best[c].get("val_loss") is not None
                                          for c in ("lstm", "gru")):
        rows.append({"source": "best trials (different hyperparameters), validation loss at "
                               "their best epoch", "controlled": False,
                     "lstm": best["lstm"]["val_loss"], "gru": best["gru"]["val_loss"]})
    for row in rows:
        row["gru_lower"] = relative(row["gru"], row["lstm"])
    controlled = [r for r in rows if r["controlled"]]
    if not controlled:
        return {"verdict": "not measured", "rows": rows, "summary": "no controlled loss comparison"}
    higher = sum(1 for r in controlled if r["gru_lower"] < -SIMILAR)
    lower = sum(1 for r in controlled if r["gru_lower"] > SIMILAR)
    similar = len(controlled) - higher - lower
    verdict = ("holds" if higher == 0 else
               "does not hold (GRU higher)" if higher == len(controlled) else "mixed")
    summary = (
        f"Of {len(controlled)} controlled comparisons (same hyperparameters or same sizes and "
        f"batches) the GRU's loss is lower in {lower}, similar in {similar} and higher in "
        f"{higher} ('similar' = within {pct(SIMILAR, 0)} of the LSTM's). Verdict: {verdict}."
    )
    context = [r for r in rows if not r["controlled"]]
    if context:
        r = context[0]
        summary += (f" The two best models (chosen by accuracy, different settings): GRU "
                    f"{r['gru']:.4f} vs LSTM {r['lstm']:.4f} nats "
                    f"({pct(abs(r['gru_lower']))} {'lower' if r['gru_lower'] >= 0 else 'higher'}).")
    return {"verdict": verdict, "rows": rows, "summary": summary}
