"""The docs test's own rules: each kind of drift it is meant to catch is reported."""

from __future__ import annotations

import pytest
from doc_blocks import Block, DocError, parse_text
from doc_commands import project_commands, stale_references
from doc_session import Ran, output_differs

FENCE = "```"


def doc(*parts: str) -> str:
    return "\n".join(parts) + "\n"


@pytest.mark.parametrize("markdown, complaint", [
    (doc(FENCE, "rnnserve serve", FENCE), "without an info string"),
    (doc("<!-- illustrative: -->", FENCE + "bash", "make image", FENCE), "needs its reason"),
    (doc("<!-- ilustrative: typo -->", FENCE + "bash", "make image", FENCE), "not a docs-test"),
    (doc("<!-- output -->", FENCE + "text", "positive", FENCE), "right after an example"),
    (doc("<!-- server -->", FENCE + "python", "serve()", FENCE), "marks a bash block"),
    (doc(FENCE + "console", "$ ls", FENCE), "unknown info string"),
    (doc(FENCE + "bash", "ls"), "never closed"),
])
def test_a_block_outside_the_scheme_is_refused(markdown, complaint):
    with pytest.raises(DocError, match=complaint):
        parse_text("x.md", markdown)


def test_markers_attach_to_the_next_block_and_indented_fences_are_read():
    blocks = parse_text("x.md", doc(
        "<!-- server -->", FENCE + "bash", "rnnserve demo", FENCE, "",
        "- item", "  " + FENCE + "yaml", "  a: 1", "  " + FENCE, "",
        FENCE + "python", "print('positive')", FENCE,
        "<!-- output -->", FENCE + "text", "positive", FENCE))
    assert [(b.line, b.info, b.marker, b.runs) for b in blocks] == [
        (2, "bash", "server", True), (7, "yaml", None, False), (11, "python", None, True),
        (15, "text", "output", False)]
    assert blocks[1].text == "a: 1\n"


def test_an_output_that_differs_is_reported_and_ellipsis_matches():
    expected = Block("x.md", 9, "text", "predictions {\n  label: \"positive\"\n  ...\n}\n",
                     "output")
    example = Block("x.md", 1, "python", "")
    matching = Ran(example, 0, 'predictions {\n  label: "positive"\n  tokens: 5\n}\n', "")
    differing = Ran(example, 0, 'predictions {\n  label: "negative"\n  tokens: 5\n}\n', "")
    assert output_differs(expected, matching) is None
    assert "x.md:9" in output_differs(expected, differing)


def test_illustrative_commands_with_stale_flags_targets_or_scripts_are_reported(tmp_path):
    block = Block("x.md", 3, "bash", doc(
        "nice -n 5 rnnserve train --cell lstm --epoch-count 3 \\",
        "    --data sst2/train.tsv [--seed S]   # --not-a-flag in a comment",
        "bash bench/gone.sh --model m -- --not-checked",
        "make image-arm"), "illustrative", "why")
    commands = project_commands(block)
    assert [(c.program, c.flags) for c in commands] == [
        (("rnnserve", "train"), ("--cell", "--epoch-count", "--data", "--seed")),
        (("script", "bench/gone.sh"), ("--model",))]
    helps = {("rnnserve", "train"): "--cell --data --seed", ("script", "bench/gone.sh"): ""}
    problems = stale_references(block, tmp_path, "image:\n\tbuild\n", helps.__getitem__)
    assert problems == [
        "x.md:3: rnnserve train has no --epoch-count",
        "x.md:3: script bench/gone.sh has no --model",
        "x.md:3: no make target 'image-arm'",
        "x.md:3: no script bench/gone.sh",
    ]
