"""Sections drawn from the test-set evaluation: confusion matrix, per-class accuracy, most confident mistakes."""

from __future__ import annotations

from vggexport.report.evaluation import Evaluation
from vggexport.report.figures import confusion_figure, thumbnail_uri
from vggexport.report.html import Section, bar, esc, figure, note, table

PER_CLASS_LIMIT = 60  # beyond this (ImageNet's 1000 classes) show the weakest ones only


def confusion_section(evaluation: Evaluation | None, problem: str | None) -> Section:
    title = "Test-set confusion matrix"
    if evaluation is None:
        return Section("confusion", title, note(problem or "No test-set evaluation."))
    pairs = evaluation.confused_pairs()
    body = (f"<p>{esc(evaluation.source)}: accuracy <b>{evaluation.accuracy:.4f}</b> "
            f"({int(evaluation.confusion.trace()):,} of {evaluation.samples:,}).</p>"
            + figure(confusion_figure(evaluation.confusion, evaluation.class_names), "confusion matrix",
                     "rows: true class, columns: predicted class; colour is the share of the row, numbers are counts"))
    if pairs:
        body += "<h3>Most frequent confusions</h3>" + table(["true class", "predicted as", "images"], pairs,
                                                            numeric=[2])
    return Section("confusion", title, body)


def per_class_section(evaluation: Evaluation | None, problem: str | None) -> Section:
    title = "Per-class accuracy"
    if evaluation is None:
        return Section("per-class", title, note(problem or "No test-set evaluation."))
    rows = evaluation.per_class()
    shown = rows
    intro = ""
    if len(rows) > PER_CLASS_LIMIT:
        shown = sorted((r for r in rows if r[3] is not None), key=lambda r: r[3])[:PER_CLASS_LIMIT]
        intro = f'<p class="muted">The {PER_CLASS_LIMIT} weakest of {len(rows)} classes.</p>'
    lines = [(name, f"{correct:,}", f"{support:,}", "no test images" if acc is None else f"{acc:.4f}",
              bar(acc or 0.0)) for name, correct, support, acc in shown]
    return Section("per-class", title, intro + table(["class", "correct", "images", "accuracy", ""], lines,
                                                     numeric=[1, 2, 3], raw=[4]))


def mistakes_section(evaluation: Evaluation | None, problem: str | None) -> Section:
    title = "Most confident mistakes"
    if evaluation is None:
        return Section("mistakes", title, note(problem or "No test-set evaluation."))
    if not evaluation.mistakes:
        return Section("mistakes", title, note(f"No mistakes among the {evaluation.samples:,} test images."))
    names = evaluation.class_names
    cards = []
    for m in evaluation.mistakes:
        cards.append(
            f'<figure><img src="{thumbnail_uri(m.pixels)}" alt="test image {m.index}">'
            f'<figcaption><div class="true">true: {esc(names[m.true])} ({m.true_probability:.2f})</div>'
            f'<div class="pred">predicted: {esc(names[m.predicted])} ({m.confidence:.2f})</div>'
            f'<div class="muted">test image #{m.index}</div></figcaption></figure>')
    intro = (f"<p>The {len(evaluation.mistakes)} wrong answers the model was surest of, shown as the model saw them "
             "(after resizing and normalisation). The numbers are the probabilities it gave each class.</p>")
    return Section("mistakes", title, intro + f'<div class="gallery">{"".join(cards)}</div>')
