"""The published targets, evaluated against one run's results.

Each target yields rows ``{target, scope, goal, measured, met, note}``; ``met`` is None when
the run lacks the numbers (e.g. the quick suite has no peers or no pinned placement).
"""

from __future__ import annotations

import math

SATURATION_SHARE = 0.90
PEER_RATIO = 1.5
C1_SLACK_MS = 0.5
POSITION_RATIO = 1.1
OPEN_SEQUENCES = 10_000
BYTES_PER_SEQUENCE = 5 * 1024


def _ok(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def best_level(levels: list[dict]) -> dict | None:
    """The level with the highest throughput (None when there is none)."""
    good = [lv for lv in levels if _ok(lv.get("throughput_rps"))]
    return max(good, key=lambda lv: lv["throughput_rps"]) if good else None


def level_at(levels: list[dict], concurrency: int) -> dict | None:
    return next((lv for lv in levels if lv.get("concurrency") == concurrency), None)


def find_unary(results: dict, *, placement, model, system, api=None, driver=None) -> dict | None:
    for entry in results.get("unary", []):
        if (entry["placement"], entry["model"], entry["system"]) == (placement, model, system) \
                and (api is None or entry["api"] == api) \
                and (driver is None or entry["driver"] == driver):
            return entry
    return None


def find_raw(results: dict, *, placement, model) -> dict | None:
    return next((r for r in results.get("raw_limit", [])
                 if r["placement"] == placement and r["model"] == model), None)


def _row(target, scope, goal, measured, met, note=""):
    return {"target": target, "scope": scope, "goal": goal, "measured": measured, "met": met,
            "note": note}


def evaluate(results: dict) -> list[dict]:
    """All target rows for the primary models of this run."""
    rows = []
    primaries = [m["name"] for m in results.get("models", []) if m.get("role") == "primary"]
    placements = list(results.get("placements", {}))
    for model in primaries:
        for placement in placements:
            scope = f"{model}, {placement}"
            rows += _saturation(results, placement, model, scope)
            rows += _latency_c1(results, placement, model, scope)
            rows += _peers(results, placement, model, scope)
            rows += _streaming(results, placement, model, scope)
            rows += _batching_gain(results, placement, model, scope)
            rows += _int8_gain(results, placement, model, scope)
    return rows


def _batching_gain(results, placement, model, scope):
    batched = find_unary(results, placement=placement, model=model, system="rnnserve", api="text")
    single = find_unary(results, placement=placement, model=model, system="rnnserve-nobatch")
    a = best_level(batched["levels"]) if batched else None
    b = best_level(single["levels"]) if single else None
    if not a or not b:
        return []
    return [_row("what dynamic batching buys", scope, "(informational)",
                 f"{a['throughput_rps'] / b['throughput_rps']:.2f}x best throughput "
                 f"({a['throughput_rps']:.0f} vs {b['throughput_rps']:.0f}/s with max batch 1)",
                 None)]


def _int8_gain(results, placement, model, scope):
    variant = next((m["name"] for m in results.get("models", [])
                    if m.get("precision") == "int8" and m["name"].startswith(model)
                    and m["name"] != model and m.get("hidden") == _meta(results, model, "hidden")
                    and m.get("layers") == _meta(results, model, "layers")), None)
    if not variant:
        return []
    raw32 = find_raw(results, placement=placement, model=model)
    raw8 = find_raw(results, placement=placement, model=variant)
    s32 = find_unary(results, placement=placement, model=model, system="rnnserve", api="text")
    s8 = find_unary(results, placement=placement, model=variant, system="rnnserve", api="text")
    parts = []
    if raw32 and raw8:
        parts.append(f"raw ORT {raw8['sentences_per_s'] / raw32['sentences_per_s']:.2f}x")
    if s32 and s8 and best_level(s32["levels"]) and best_level(s8["levels"]):
        ratio = best_level(s8["levels"])["throughput_rps"] / best_level(s32["levels"])[
            "throughput_rps"]
        parts.append(f"rnnserve {ratio:.2f}x")
    if not parts:
        return []
    return [_row(f"int8 ({variant}) vs fp32 throughput", scope, "(informational)",
                 ", ".join(parts), None)]


def _meta(results, model, key):
    return next((m.get(key) for m in results.get("models", []) if m["name"] == model), None)


def _saturation(results, placement, model, scope):
    raw = find_raw(results, placement=placement, model=model)
    entry = find_unary(results, placement=placement, model=model, system="rnnserve", api="text")
    best = best_level(entry["levels"]) if entry else None
    if not raw or not best:
        return [_row("saturation >= 90% of raw ORT", scope, ">= 90%", None, None, "missing data")]
    share = best["throughput_rps"] / raw["sentences_per_s"]
    pipe = best["throughput_rps"] / raw["pipeline_sentences_per_s"]
    binding = placement == "pinned"
    return [_row(
        "saturation >= 90% of raw ORT", scope, ">= 90% (pinned)",
        f"{share:.0%} of ORT-only ({raw['sentences_per_s']:.0f}/s @b{raw['best_batch']}); "
        f"{pipe:.0%} of tokenize+ORT; rnnserve {best['throughput_rps']:.0f}/s "
        f"@c{best['concurrency']}",
        (share >= SATURATION_SHARE) if binding else None,
        "" if binding else "informational (target is for pinned)",
    )]


def _latency_c1(results, placement, model, scope):
    raw = find_raw(results, placement=placement, model=model)
    entry = find_unary(results, placement=placement, model=model, system="rnnserve", api="text")
    c1 = level_at(entry["levels"], 1) if entry else None
    if not raw or not c1 or raw.get("batch1_p50_ms") is None:
        return [_row("p50 @c1 <= raw batch-1 + 0.5 ms", scope, "", None, None, "missing data")]
    bound = raw["batch1_p50_ms"] + C1_SLACK_MS
    return [_row("p50 @c1 <= raw batch-1 + 0.5 ms", scope, f"<= {bound:.3f} ms",
                 f"{c1['p50_ms']:.3f} ms (raw b1 {raw['batch1_p50_ms']:.3f} ms; "
                 f"gap {c1['p50_ms'] - raw['batch1_p50_ms']:.3f} ms)",
                 c1["p50_ms"] <= bound)]


def _peers(results, placement, model, scope):
    rows = []
    for peer, driver in (("pytriton", "perf_analyzer"), ("mlserver", "loadgen")):
        theirs = find_unary(results, placement=placement, model=model, system=peer,
                            api="kserve", driver=driver)
        ours = find_unary(results, placement=placement, model=model, system="rnnserve",
                          api="kserve", driver=driver)
        if peer == "pytriton" and not theirs:  # no perf_analyzer: compare on our loadgen
            driver = "loadgen"
            theirs = find_unary(results, placement=placement, model=model, system=peer,
                                api="kserve", driver=driver)
            ours = find_unary(results, placement=placement, model=model, system="rnnserve",
                              api="kserve", driver=driver)
        b = best_level(theirs["levels"]) if theirs else None
        a_any = best_level(ours["levels"]) if ours else None
        if not b or not a_any:
            continue
        # Latency-bounded throughput: our best level whose p99 is no worse than the peer's
        # p99 at the peer's best throughput.
        bounded = [lv for lv in ours["levels"]
                   if _ok(lv.get("p99_ms")) and lv["p99_ms"] <= b["p99_ms"]]
        a = best_level(bounded)
        ratio = a["throughput_rps"] / b["throughput_rps"] if a else 0.0
        measured = (f"{ratio:.2f}x at p99 <= {b['p99_ms']:.1f} ms ("
                    + (f"{a['throughput_rps']:.0f}/s @c{a['concurrency']}, p99 {a['p99_ms']:.1f}"
                       if a else "no level that fast")
                    + f" vs {b['throughput_rps']:.0f}/s @c{b['concurrency']}); unbounded "
                    f"{a_any['throughput_rps'] / b['throughput_rps']:.2f}x")
        rows.append(_row(f">= 1.5x {peer} throughput at <= p99", f"{scope}, {driver}",
                         ">= 1.5x", measured, ratio >= PEER_RATIO))
    return rows


def _streaming(results, placement, model, scope):
    run = next((s for s in results.get("streaming", [])
                if s["placement"] == placement and s["model"] == model), None)
    if not run:
        return []
    rows = []
    pos = (run.get("positions") or {}).get("by_position", {})
    keys = sorted(int(k) for k in pos)
    if len(keys) >= 2:
        first = 10 if 10 in keys[:-1] else keys[0]
        early, late = pos[str(first)], pos[str(keys[-1])]
        if _ok(early.get("p50_ms")) and _ok(late.get("p50_ms")) and early["p50_ms"] > 0:
            ratio = late["p50_ms"] / early["p50_ms"]
            rows.append(_row(
                f"chunk p50 @pos{keys[-1]} <= 1.1x @pos{first}", scope,
                "<= 1.1x", f"{ratio:.2f}x ({late['p50_ms']:.2f} vs {early['p50_ms']:.2f} ms)",
                ratio <= POSITION_RATIO))
    kserve_seq = run.get("kserve_sequences")
    if kserve_seq and _ok(kserve_seq.get("bytes_per_sequence")):
        n, per = kserve_seq["opened"], kserve_seq["bytes_per_sequence"]
        full = kserve_seq["sequences"] >= OPEN_SEQUENCES
        rows.append(_row(
            "10k open sequences, <= 5 KB each", scope, "<= 5120 B/seq",
            f"{n} held, {per:.0f} B/seq by RSS (state {run['state_bytes']} B)",
            (n >= OPEN_SEQUENCES and per <= BYTES_PER_SEQUENCE) if full else None,
            "" if full else f"run held {n} (< 10k): informational"))
    biggest = max(run.get("levels", []), key=lambda lv: lv["streams"], default=None)
    if biggest and biggest.get("rss_bytes_per_open_sequence") is not None:
        rows.append(_row(
            "open gRPC streams: memory per stream", scope, "(informational)",
            f"{biggest['opened']} streams, {biggest['rss_bytes_per_open_sequence']:.0f} B/stream "
            "by RSS (includes the gRPC call)", None))
    return rows
