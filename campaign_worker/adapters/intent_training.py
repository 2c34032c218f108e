"""Training the intent model from labelled replies (scikit-learn), deterministically.

Each reply is extracted (``reply_text.extract``, as at run time) and turned into its
features (``domain.reply_features.features``); a TF-IDF weighting (sublinear term
frequency, features seen in at least ``MIN_DF`` replies) feeds a multinomial logistic
regression. Its probabilities are calibrated by temperature scaling: the one temperature
that minimizes the log loss on a separate calibration set (the shipped model: the dev
set), else on out-of-fold scores. The result is plain arrays
(``intent_model.ModelArtifact``, written as ``model.npz``, no pickle, beside
``vocabulary.json`` and ``model.json``); training the same corpus with the same library
versions gives the same artifact (tests/unit/test_intent_artifact.py).

scikit-learn is imported here only: the worker scores with numpy (``intent_model``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import TYPE_CHECKING, Final

import numpy as np
from numpy.typing import NDArray

from campaign_worker.adapters.intent_model import ModelArtifact
from campaign_worker.adapters.reply_text import extract
from campaign_worker.domain.labelled_replies import LabelledReply, escape
from campaign_worker.domain.reply_features import features

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

MIN_DF: Final = 2
C: Final = 8.0  # inverse regularization, chosen on the dev set
FOLDS: Final = 5
SEED: Final = 20261203
# Replies whose probabilities training records with the model (metadata "probes"), as
# scikit-learn computes them: the test suite checks the numpy scoring gives the same.
PROBES: Final = (
    "Yes please",
    "STOP",
    "Don't stop sending these, love them",
    "How do I stop the auto-renewal?",
    "Je suis absent du bureau jusqu'au 5 janvier.",
    "Kein Interesse, danke.",
    "¿Cuánto cuesta?",
    "lol",
)


def corpus_digest(replies: Sequence[LabelledReply]) -> str:
    """sha256 of the corpus as trained on (intent and text of each reply, in order)."""
    digest = hashlib.sha256()
    for reply in replies:
        digest.update(f"{reply.intent}\t{escape(reply.text)}\n".encode())
    return digest.hexdigest()


def _temperature(logits: NDArray[np.float64], labels: NDArray[np.int64]) -> float:
    from scipy.optimize import minimize_scalar

    def loss(temperature: float) -> float:
        scaled = logits / temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=1))
        return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))

    found = minimize_scalar(loss, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-4})
    return round(float(found.x), 4)


def _logits(scores: NDArray[np.float64], classes: int) -> NDArray[np.float64]:
    """Per-class scores: scikit-learn gives a two-class model one column (class 1's
    score; class 0's is 0), for coefficients, intercepts and decisions alike."""
    if classes != 2:
        return scores
    if scores.ndim == 1:
        return np.column_stack([np.zeros_like(scores), scores])
    if scores.shape[1] == 1:
        return np.column_stack([np.zeros_like(scores[:, 0]), scores[:, 0]])
    return scores


def _softmax(row: NDArray[np.float64]) -> list[float]:
    shifted = np.exp(row - row.max())
    return [round(float(value), 6) for value in shifted / shifted.sum()]


def _vectorizer() -> TfidfVectorizer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        analyzer=lambda doc: doc, sublinear_tf=True, min_df=MIN_DF, dtype=np.float64
    )


def _model(c: float) -> LogisticRegression:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, solver="newton-cg", max_iter=300, tol=1e-6)


def _out_of_fold_temperature(
    docs: list[list[str]], labels: NDArray[np.int64], classes: int, c: float
) -> float:
    """The temperature fitted on out-of-fold scores of the training replies themselves
    (1.0 when some intent has too few replies to hold any out)."""
    from sklearn.model_selection import StratifiedKFold

    n_folds = min(FOLDS, int(np.bincount(labels).min()))
    if n_folds < 2:
        return 1.0
    oof = np.zeros((len(docs), classes))
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=SEED)
    for fit_rows, held_rows in folds.split(np.zeros(len(labels)), labels):
        fold_vectorizer = _vectorizer()
        x_fit = fold_vectorizer.fit_transform([docs[i] for i in fit_rows])
        fold_model = _model(c).fit(x_fit, labels[fit_rows])
        x_held = fold_vectorizer.transform([docs[i] for i in held_rows])
        oof[held_rows] = _logits(fold_model.decision_function(x_held), classes)
    return _temperature(oof, labels)


def _metadata(
    replies: Sequence[LabelledReply],
    calibration: Sequence[LabelledReply],
    c: float,
    probes: dict[str, list[float]],
) -> dict[str, object]:
    return {
        "replies": len(replies),
        "corpus_sha256": corpus_digest(replies),
        "calibration_replies": len(calibration),
        "calibration_sha256": corpus_digest(calibration),
        "min_df": MIN_DF,
        "C": c,
        "folds": FOLDS,
        "seed": SEED,
        "scikit-learn": version("scikit-learn"),
        "numpy": version("numpy"),
        "probes": probes,
    }


def train(
    replies: Sequence[LabelledReply],
    *,
    calibration: Sequence[LabelledReply] = (),
    extractor: Callable[[str], str] = extract,
    c: float = C,
) -> ModelArtifact:
    """Fit the model on ``replies`` (their ``intent`` is the label). The temperature is
    fitted on ``calibration`` (replies written apart from the corpus: the shipped dev
    set) when given, else on out-of-fold scores of ``replies`` (optimistic when the
    corpus holds variants of the same replies, as the shipped one does)."""
    docs = [features(extractor(reply.text)) for reply in replies]
    classes = tuple(sorted({reply.intent for reply in replies}))
    labels = np.array([classes.index(reply.intent) for reply in replies], dtype=np.int64)
    vectorizer = _vectorizer()
    final = _model(c).fit(vectorizer.fit_transform(docs), labels)

    def logits(texts: Sequence[str]) -> NDArray[np.float64]:
        held = vectorizer.transform([features(extractor(text)) for text in texts])
        return _logits(final.decision_function(held), len(classes))

    known = [reply for reply in calibration if reply.intent in classes]
    if known:
        temperature = _temperature(
            logits([r.text for r in known]),
            np.array([classes.index(r.intent) for r in known], dtype=np.int64),
        )
    else:
        temperature = _out_of_fold_temperature(docs, labels, len(classes), c)
    probes = {
        text: _softmax(row / temperature) for text, row in zip(PROBES, logits(PROBES), strict=True)
    }
    return ModelArtifact(
        classes=classes,
        vocabulary=tuple(str(name) for name in vectorizer.get_feature_names_out()),
        idf=vectorizer.idf_.astype(np.float32),
        coef=np.ascontiguousarray(_logits(final.coef_.T, len(classes)).astype(np.float32)),
        intercept=_logits(final.intercept_, len(classes)).ravel().astype(np.float32),
        temperature=temperature,
        metadata=_metadata(replies, known, c, probes),
    )


__all__ = ["MIN_DF", "C", "corpus_digest", "train"]
