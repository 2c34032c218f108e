"""``campaign-worker intents classify|eval|train`` in a subprocess: input order, ``\\n``
inside a reply, templates, bad input (exit 2, a clear message), missing files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cli_support import EXE, run_cli

TEMPLATE = """\
template_id: examples
intents:
  pricing:
    examples: ["what's the price", "how much is it", "send me a quote"]
understanding: {review_below: 0.55, opt_out_review_above: 0.2}
campaign_types:
  sales:
    stages:
      - name: one
        messages: [{text: "Hi"}]
"""


def lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_classify_stdin_one_json_line_each_in_order() -> None:
    replies = [
        "STOP",
        "Yes please\\n\\nOn Tue, 3 Dec 2026 at 10:15, Acme <a@b.example> wrote:\\n> Reply STOP",
        "How much does it cost?",
        "Ich bin bis zum 10. Januar im Urlaub.",
    ]
    result = run_cli("intents", "classify", stdin="\n".join(replies) + "\n")
    assert result.returncode == 0, result.stderr
    found = lines(result.stdout)
    assert [f["intent"] for f in found] == ["opt_out", "positive", "question", "out_of_office"]
    assert found[1]["extracted_text"] == "Yes please"
    assert found[3]["language"] == "de"
    for item in found:
        assert {"intent", "confidence", "language", "extracted_text", "needs_review"} <= set(item)
        assert isinstance(item["needs_review"], bool) and 0 <= item["confidence"] <= 1


def test_classify_text_and_a_template(tmp_path: Path) -> None:
    (tmp_path / "examples.yaml").write_text(TEMPLATE, encoding="utf-8")
    env = {"CAMPAIGN_TEMPLATES_DIR": str(tmp_path)}
    result = run_cli(
        "intents", "classify", "--template", "examples", "--text", "how much for 10 users?", env=env
    )
    assert result.returncode == 0, result.stderr
    [found] = lines(result.stdout)
    assert (found["intent"], found["source"]) == ("pricing", "example")
    quoted = run_cli("intents", "classify", "--text", "Yes please\\n\\n> Reply STOP to opt out")
    assert lines(quoted.stdout)[0]["extracted_text"] == "Yes please"
    unknown = run_cli("intents", "classify", "--template", "nope", "--text", "hi", env=env)
    assert unknown.returncode == 2 and "unknown template_id 'nope'" in unknown.stderr


def test_classify_refuses_an_empty_line_and_non_utf8() -> None:
    result = run_cli("intents", "classify", stdin="yes\n\nno\n")
    assert result.returncode == 2
    assert "line 2: empty reply" in result.stderr
    assert len(lines(result.stdout)) == 1  # what came before is printed
    raw = subprocess.run(
        [str(EXE), "intents", "classify"], input=b"ok\n\xff\xfe\n", capture_output=True, check=False
    )
    assert raw.returncode == 2 and b"line 2: not UTF-8 text" in raw.stderr
    empty = run_cli("intents", "classify", "--text", "  ")
    assert empty.returncode == 2 and "empty" in empty.stderr


EVAL = """\
# gold<TAB>text<TAB>language<TAB>tags
opt_out\tSTOP\ten\tsms
opt_out\tplease stop texting me\ten\tsms
positive\tYes please\\n\\nOn Tue, 3 Dec 2026, Acme <a@b.example> wrote:\\n> STOP\ten\temail,quoted
question\tWie viel kostet das?\tde\tsms
not_interested\tNo thanks\ten\tsms
other\tlol\ten
"""


def test_eval_json_figures(tmp_path: Path) -> None:
    path = tmp_path / "eval.tsv"
    path.write_text(EVAL, encoding="utf-8")
    result = run_cli("intents", "eval", str(path), "--json", "--errors")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["replies"] == 6
    keys = {"accuracy", "opt_out_recall", "opt_out_safety", "false_opt_out_rate"}
    keys |= {"needs_review_rate", "per_intent", "confusion", "by_language", "by_tag"}
    assert keys <= set(figures)
    assert figures["opt_out_recall"] == 1.0 and figures["false_opt_outs"] == 0
    assert "needs_review" in figures["confusion"]["opt_out"]
    assert set(figures["by_language"]) == {"en", "de"}
    assert figures["by_tag"]["quoted"]["replies"] == 1
    assert len(figures["errors"]) == round((1 - figures["accuracy"]) * 6)


def test_eval_table(tmp_path: Path) -> None:
    path = tmp_path / "eval.tsv"
    path.write_text(EVAL, encoding="utf-8")
    result = run_cli("intents", "eval", str(path))
    assert result.returncode == 0, result.stderr
    for text in ("accuracy", "opt out recall", "false opt out rate", "confusion matrix",
                 "needs_review", "language", "tag"):  # fmt: skip
        assert text in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("opt_out\tSTOP\npositive\n", "line 2: expected intent<TAB>text"),
        ("Bad Intent\tx\n", "line 1: 'Bad Intent' is not an intent name"),
        ("# nothing\n", "no labelled replies"),
    ],
)
def test_eval_bad_file_exits_2_naming_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    result = run_cli("intents", "eval", str(path))
    assert result.returncode == 2
    assert message in result.stderr


def test_eval_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("intents", "eval", str(tmp_path / "missing.tsv"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_train_a_model_and_classify_with_it(tmp_path: Path) -> None:
    corpus = tmp_path / "mine.tsv"
    corpus.write_text(
        "".join(f"yes\t{t}\n" for t in ("yes", "sure", "ok great", "yep", "sounds good"))
        + "".join(f"no\t{t}\n" for t in ("no", "nope", "no thanks", "not now", "nah")),
        encoding="utf-8",
    )
    out = tmp_path / "model"
    trained = run_cli("intents", "train", str(corpus), "--no-shipped", "--out", str(out))
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["classes"] == ["no", "yes"] and summary["replies"] == 10
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.npz", "vocabulary.json"]
    used = run_cli("intents", "classify", "--model", str(out), "--text", "yes sure")
    assert used.returncode == 0, used.stderr
    assert lines(used.stdout)[0]["scores"].keys() == {"no", "yes"}
    nothing = run_cli("intents", "train", "--no-shipped", "--out", str(tmp_path / "x"))
    assert nothing.returncode == 2 and "nothing to train on" in nothing.stderr
    missing = run_cli("intents", "classify", "--model", str(tmp_path / "none"), "--text", "hi")
    assert missing.returncode == 2 and "model directory not found" in missing.stderr
