"""The reply understanding engine: extraction, rules, language, model, examples.

``NgramReplyUnderstanding`` implements ``service.understanding.ReplyUnderstanding``:

1. ``reply_text.extract``: the author's own words (quotes, signatures, footers removed);
2. rules on them: a whole-message opt-out word (``domain.understanding.is_opt_out_word``),
   then the template's own keywords/phrases/exact answers/regexes (``Template.rules``);
   a negated opt-out command (``negates_opt_out``) is never opted out by the model alone;
3. the language (``language.LanguageDetector``, with fallbacks for short replies);
4. the intent model's probabilities of the built-in intents (``intent_model``);
5. the nearest template example (``domain.examples``, weighted by the model's IDF);
6. ``domain.understanding.decide`` with the template's thresholds.

Thread-safe. The model and the language detector load on first use (or ``warm_up``);
each template's example index is built once and kept while the template is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from campaign_worker.adapters.intent_model import IntentModel
from campaign_worker.adapters.language import LanguageDetector
from campaign_worker.adapters.reply_text import extract
from campaign_worker.domain.examples import ExampleIndex
from campaign_worker.domain.intents import OPT_OUT, normalize
from campaign_worker.domain.reply_features import features
from campaign_worker.domain.templates import Template
from campaign_worker.domain.understanding import (
    Classification,
    Evidence,
    UnderstandingPolicy,
    decide,
    is_opt_out_word,
    negates_opt_out,
)

_DEFAULT_POLICY = UnderstandingPolicy()
_CACHED_TEMPLATES = 256


class NgramReplyUnderstanding:
    """Rules first, then a linear n-gram model; see the module docstring."""

    def __init__(
        self,
        model: IntentModel | None = None,
        detector: LanguageDetector | None = None,
        *,
        model_dir: Path | None = None,
        extractor: Callable[[str], str] = extract,
    ) -> None:
        self._model = model
        self._model_dir = model_dir
        self._detector = detector or LanguageDetector()
        self._extract = extractor
        self._lock = threading.Lock()
        self._examples: dict[int, tuple[Template, ExampleIndex]] = {}

    @property
    def model(self) -> IntentModel:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = IntentModel.load(self._model_dir)
        return self._model

    def warm_up(self) -> None:
        self._detector.load()
        self.understand("warm up")

    def _example_index(self, template: Template) -> ExampleIndex | None:
        if not template.examples:
            return None
        cached = self._examples.get(id(template))
        if cached is not None and cached[0] is template:
            return cached[1]
        model = self.model

        def weight(feature: str) -> float:
            # A feature the corpus never had is rarer than any it had.
            return model.idf(feature) or model.max_idf

        index = ExampleIndex(template.examples, weight)
        with self._lock:
            if len(self._examples) >= _CACHED_TEMPLATES:
                self._examples.clear()
            self._examples[id(template)] = (template, index)
        return index

    def understand(
        self, content: str, template: Template | None = None, *, languages: Sequence[str] = ()
    ) -> Classification:
        text = self._extract(content)
        probabilities = self.model.probabilities(features(text))
        fallbacks = [*languages, *(template.languages if template is not None else ())]
        rule: str | None = None
        example = None
        if template is not None:
            keywords = frozenset(normalize(word) for word in template.opt_out_keywords)
            rule = OPT_OUT if is_opt_out_word(text, keywords) else template.rules.match(text)
            index = self._example_index(template)
            example = index.best(text) if index is not None else None
        elif is_opt_out_word(text):
            rule = OPT_OUT
        evidence = Evidence(
            extracted_text=text,
            language=self._detector.detect(text, fallbacks),
            probabilities=probabilities,
            rule=rule,
            example=example,
            negated_opt_out=negates_opt_out(text),
        )
        return decide(evidence, template.understanding_policy if template else _DEFAULT_POLICY)


__all__ = ["NgramReplyUnderstanding"]
