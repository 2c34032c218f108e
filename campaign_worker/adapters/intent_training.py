"""Training the intent model from labelled replies (scikit-learn), deterministically.

Each reply is extracted (``reply_text.extract``, as at run time) and turned into its
features (``domain.reply_features.features``); a TF-IDF weighting (sublinear term
frequency, features seen in at least ``MIN_DF`` replies) feeds a multinomial logistic
regression. Its probabilities are calibrated by temperature scaling: one temperature,
fitted on out-of-fold scores of a fixed stratified 5-fold split, that minimizes the
log loss. The result is plain arrays (``intent_model.ModelArtifact``, written as ``model.npz``, no
pickle, beside ``vocabulary.json`` and ``model.json``); training the same corpus with the
same library versions gives the same artifact (tests/unit/test_intent_artifact.py).

scikit-learn is imported here only: the worker scores with numpy (``intent_model``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Final

import numpy as np
from numpy.typing import NDArray

from campaign_worker.adapters.intent_model import ModelArtifact
from campaign_worker.adapters.reply_text import extract
from campaign_worker.domain.labelled_replies import LabelledReply, escape
from campaign_worker.domain.reply_features import features

MIN_DF: Final = 2
C: Final = 8.0  # inverse regularization, chosen on the dev set
FOLDS: Final = 5
SEED: Final = 20261203


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


def train(
    replies: Sequence[LabelledReply],
    *,
    extractor: Callable[[str], str] = extract,
    c: float = C,
) -> ModelArtifact:
    """Fit the model on ``replies`` (their ``intent`` is the label)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    docs = [features(extractor(reply.text)) for reply in replies]
    classes = tuple(sorted({reply.intent for reply in replies}))
    labels = np.array([classes.index(reply.intent) for reply in replies], dtype=np.int64)

    def vectorizer() -> TfidfVectorizer:
        return TfidfVectorizer(
            analyzer=lambda doc: doc, sublinear_tf=True, min_df=MIN_DF, dtype=np.float64
        )

    def model() -> LogisticRegression:
        return LogisticRegression(C=c, solver="newton-cg", max_iter=300, tol=1e-6)

    oof = np.zeros((len(replies), len(classes)))
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=SEED)
    for fit_rows, held_rows in folds.split(np.zeros(len(labels)), labels):
        fold_vectorizer = vectorizer()
        x_fit = fold_vectorizer.fit_transform([docs[i] for i in fit_rows])
        fold_model = model().fit(x_fit, labels[fit_rows])
        x_held = fold_vectorizer.transform([docs[i] for i in held_rows])
        oof[held_rows] = fold_model.decision_function(x_held)
    temperature = _temperature(oof, labels)

    final_vectorizer = vectorizer()
    x = final_vectorizer.fit_transform(docs)
    final = model().fit(x, labels)
    vocabulary = tuple(str(name) for name in final_vectorizer.get_feature_names_out())
    return ModelArtifact(
        classes=classes,
        vocabulary=vocabulary,
        idf=final_vectorizer.idf_.astype(np.float32),
        coef=np.ascontiguousarray(final.coef_.T, dtype=np.float32),
        intercept=final.intercept_.astype(np.float32),
        temperature=temperature,
        metadata={
            "replies": len(replies),
            "corpus_sha256": corpus_digest(replies),
            "min_df": MIN_DF,
            "C": c,
            "folds": FOLDS,
            "seed": SEED,
            "scikit-learn": version("scikit-learn"),
            "numpy": version("numpy"),
        },
    )


__all__ = ["MIN_DF", "C", "corpus_digest", "train"]
