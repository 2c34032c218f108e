"""``campaign-worker intents classify|eval|train``: the reply understanding, by hand.

``classify`` reads replies (one a line, ``\\n`` for a new line inside one) or ``--text``
and prints one JSON line each, in input order. ``eval`` scores a labelled TSV file
(``intent<TAB>text[<TAB>language[<TAB>tags]]``). ``train`` builds a model from labelled
files, deterministically (the worker uses it with ``INTENT_MODEL_DIR``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from campaign_worker.domain.errors import InvalidInputError
from campaign_worker.domain.labelled_replies import LabelledReply, parse_lines, unescape
from campaign_worker.entrypoints.cli.common import (
    EXIT_USAGE,
    JSON_HELP,
    command_group,
    console,
    fail,
    note,
    print_json,
    service_errors,
)

if TYPE_CHECKING:
    from campaign_worker.domain.templates import Template
    from campaign_worker.service.understanding import ReplyUnderstanding

app = command_group("Classify replies, score the classifier on labelled replies, retrain it.")

TemplateOption = Annotated[
    str | None,
    typer.Option("--template", help="a template id: its custom intents, rules and thresholds"),
]
ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model",
        file_okay=False,
        help="a model directory from `intents train` (default: INTENT_MODEL_DIR, else shipped)",
    ),
]


def _engine(model: Path | None) -> ReplyUnderstanding:
    from campaign_worker.bootstrap import build_understanding
    from campaign_worker.settings import get_settings

    with service_errors():
        settings = get_settings()
        if model is not None:
            if not model.is_dir():
                raise fail(f"model directory not found: {model}", EXIT_USAGE)
            settings = settings.model_copy(update={"intent_model_dir": model})
        return build_understanding(settings)


def _template(template_id: str | None) -> Template | None:
    if template_id is None:
        return None
    from campaign_worker.adapters.template_files import TemplateFiles
    from campaign_worker.settings import get_settings

    with service_errors():
        return TemplateFiles(get_settings().campaign_templates_dir).get_template(template_id)


def _stdin_replies() -> Iterator[str]:
    stream = sys.stdin.buffer
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise fail(f"line {number}: not UTF-8 text", EXIT_USAGE) from None
        if not line.strip():
            raise fail(
                f"line {number}: empty reply (one reply a line; write \\n for a new line "
                "inside a reply)",
                EXIT_USAGE,
            )
        yield unescape(line)


@app.command()
def classify(
    text: Annotated[
        str | None,
        typer.Option("--text", help="one reply, \\n for a new line (else one a line on stdin)"),
    ] = None,
    template: TemplateOption = None,
    language: Annotated[
        list[str] | None,
        typer.Option("--language", help="fallback language(s) for short replies, e.g. de"),
    ] = None,
    model: ModelOption = None,
) -> None:
    """Classify replies (stdin, one a line, or --text): one JSON line each, in order.

    Each line: intent, confidence, language, extracted_text, needs_review,
    opt_out_probability, source (rule, model, example), review_reason, scores.
    """
    found = _template(template)
    engine = _engine(model)
    replies = [unescape(text)] if text is not None else _stdin_replies()
    with service_errors():
        for reply in replies:
            if not reply.strip():
                raise fail("the reply is empty", EXIT_USAGE)
            result = engine.understand(reply, found, languages=language or ())
            sys.stdout.write(json.dumps(result.as_dict(), ensure_ascii=False) + "\n")
            sys.stdout.flush()


def read_labelled(path: Path) -> list[LabelledReply]:
    """A labelled TSV file; a bad line exits 2 naming it."""
    try:
        with path.open(encoding="utf-8") as handle:
            replies = parse_lines(handle)
    except UnicodeDecodeError:
        raise fail(f"{path}: not UTF-8 text", EXIT_USAGE) from None
    except InvalidInputError as exc:
        raise fail(f"{path}: {exc}", EXIT_USAGE) from None
    if not replies:
        raise fail(f"{path}: no labelled replies", EXIT_USAGE)
    return replies


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def render_report(figures: dict[str, Any], title: str) -> None:
    """The eval figures as tables."""
    out = console()
    summary = Table(title=title, show_header=False)
    for key in (
        "replies",
        "accuracy",
        "opt_out_recall",
        "opt_out_safety",
        "false_opt_outs",
        "false_opt_out_rate",
        "needs_review_rate",
        "accuracy_when_decided",
    ):
        summary.add_row(key.replace("_", " "), _fmt(figures[key]))
    if figures["quoted_or_signed"]["replies"]:
        summary.add_row("accuracy quoted or signed", _fmt(figures["quoted_or_signed"]["accuracy"]))
    out.print(summary)
    intents = Table("intent", "precision", "recall", "F1", "support", "predicted")
    for name, row in figures["per_intent"].items():
        intents.add_row(
            name, *(_fmt(row[k]) for k in ("precision", "recall", "f1", "support", "predicted"))
        )
    out.print(intents)
    columns = list(next(iter(figures["confusion"].values())))
    matrix = Table("gold \\ predicted", *columns, title="confusion matrix")
    for gold, row in figures["confusion"].items():
        matrix.add_row(gold, *(str(row[c]) for c in columns))
    out.print(matrix)
    for key, label in (("by_language", "language"), ("by_tag", "tag")):
        if figures[key]:
            table = Table(label, "replies", "accuracy")
            for name, row in figures[key].items():
                table.add_row(name, str(row["replies"]), _fmt(row["accuracy"]))
            out.print(table)


@app.command("eval")
def evaluate(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="labelled replies: intent<TAB>text[<TAB>lang[<TAB>tags]]",
        ),
    ],
    template: TemplateOption = None,
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    errors: Annotated[
        bool, typer.Option("--errors", help="also list each reply classified wrong")
    ] = False,
) -> None:
    """Score the classifier on a labelled TSV file: precision, recall, confusion matrix.

    Also accuracy, opt-out recall and safety, false opt-outs, the review rate, and per
    language and tag when the columns are there. A held reply counts as needs_review.
    """
    from campaign_worker.service.understanding import classify_all, scored_report

    replies = read_labelled(file)
    found = _template(template)
    engine = _engine(model)
    with service_errors():
        results = list(classify_all(engine, replies, found))
    figures = scored_report(results)
    if errors:
        figures["errors"] = [
            {"line": reply.line, "gold": reply.intent, **result.as_dict()}
            for reply, result in results
            if result.outcome != reply.intent
        ]
    if as_json:
        print_json(figures)
        return
    render_report(figures, f"{file} ({len(replies)} replies)")
    for wrong in figures.get("errors", []):
        outcome = "needs_review" if wrong["needs_review"] else wrong["intent"]
        console().print(
            f"line {wrong['line']}: {wrong['gold']} -> {outcome} ({wrong['intent']} "
            f"{wrong['confidence']:.2f}, opt-out {wrong['opt_out_probability']:.2f}): "
            f"{json.dumps(wrong['extracted_text'], ensure_ascii=False)}",
            markup=False,
        )


@app.command()
def train(
    files: Annotated[
        list[Path] | None,
        typer.Argument(exists=True, dir_okay=False, help="labelled TSV files to train on"),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", file_okay=False, help="directory to write the model to")
    ] = Path("intent-model"),
    shipped: Annotated[
        bool, typer.Option(help="also train on the shipped corpus (train.tsv)")
    ] = True,
    calibration: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="labelled replies to calibrate confidences on (default with --shipped: "
            "the shipped dev.tsv; without: cross-validation)",
        ),
    ] = None,
) -> None:
    """Train an intent model on labelled TSV files, deterministically, into --out.

    The shipped corpus too unless --no-shipped. Use it with INTENT_MODEL_DIR (--model)."""
    from campaign_worker.adapters.intent_model import shipped_directory, write_artifact
    from campaign_worker.adapters.intent_training import train as fit

    corpus = ([shipped_directory() / "train.tsv"] if shipped else []) + list(files or [])
    if not corpus:
        raise fail("nothing to train on: give FILES or keep --shipped", EXIT_USAGE)
    replies = [reply for path in corpus for reply in read_labelled(path)]
    if len({reply.intent for reply in replies}) < 2:
        raise fail("training needs replies of at least two intents", EXIT_USAGE)
    if calibration is None and shipped:
        calibration = shipped_directory() / "dev.tsv"
    held = read_labelled(calibration) if calibration is not None else []
    note(f"training on {len(replies)} replies from {len(corpus)} file(s)...")
    artifact = fit(replies, calibration=held)
    for path in write_artifact(artifact, out):
        note(f"wrote {path}")
    print_json(
        {
            "out": str(out),
            "replies": len(replies),
            "features": len(artifact.vocabulary),
            "classes": list(artifact.classes),
            "temperature": artifact.temperature,
        }
    )


__all__ = ["app", "read_labelled", "render_report"]
