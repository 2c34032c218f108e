"""The shipped intent model at run time: numpy arrays, no scikit-learn, no pickle.

``ModelArtifact`` holds what training produced (``intent_training``): the classes, the
feature vocabulary with its IDF weights, the coefficients, intercepts and temperature.
``IntentModel`` scores a reply's features exactly as scikit-learn's ``TfidfVectorizer``
(sublinear TF, L2 norm) and ``LogisticRegression`` would, then divides by the
temperature: about 20 µs for a short reply. The shipped artifact lives in
``campaign_worker/data/intents/`` (``make intents-model`` rebuilds it).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from campaign_worker.domain.errors import ConfigurationError

ARTIFACT_FILES: Final = ("model.npz", "vocabulary.json", "model.json")


def shipped_directory() -> Path:
    """Where the packaged corpus and model are (``campaign_worker/data/intents``)."""
    return Path(str(resources.files("campaign_worker") / "data" / "intents"))


@dataclass(frozen=True)
class ModelArtifact:
    """A trained model as arrays: scores = softmax((x @ coef + intercept) / temperature),
    x the L2-normalized TF-IDF vector of a reply's features."""

    classes: tuple[str, ...]
    vocabulary: tuple[str, ...]
    idf: NDArray[np.float32]
    coef: NDArray[np.float32]  # (features, classes)
    intercept: NDArray[np.float32]  # (classes,)
    temperature: float
    metadata: dict[str, Any]


def write_artifact(artifact: ModelArtifact, directory: Path) -> list[Path]:
    """Write the artifact's three files into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    npz, vocabulary, meta = (directory / name for name in ARTIFACT_FILES)
    with npz.open("wb") as handle:
        np.savez_compressed(
            handle,
            classes=np.array(artifact.classes),
            idf=artifact.idf,
            coef=artifact.coef,
            intercept=artifact.intercept,
            temperature=np.array([artifact.temperature], dtype=np.float64),
        )
    vocabulary.write_text(
        json.dumps(list(artifact.vocabulary), ensure_ascii=False, separators=(",", ":")) + "\n",
        encoding="utf-8",
    )
    meta.write_text(json.dumps(artifact.metadata, indent=2, sort_keys=True) + "\n", "utf-8")
    return [npz, vocabulary, meta]


def read_artifact(directory: Path) -> ModelArtifact:
    """The artifact ``write_artifact`` wrote (arrays only: pickles are refused)."""
    npz, vocabulary, meta = (directory / name for name in ARTIFACT_FILES)
    try:
        with np.load(npz, allow_pickle=False) as arrays:
            artifact = ModelArtifact(
                classes=tuple(str(name) for name in arrays["classes"]),
                vocabulary=tuple(json.loads(vocabulary.read_text("utf-8"))),
                idf=arrays["idf"],
                coef=arrays["coef"],
                intercept=arrays["intercept"],
                temperature=float(arrays["temperature"][0]),
                metadata=json.loads(meta.read_text("utf-8")),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the intent model in {directory}: {exc}") from exc
    shapes = (len(artifact.vocabulary), len(artifact.classes))
    if artifact.coef.shape != shapes or artifact.idf.shape != shapes[:1]:
        raise ConfigurationError(f"the intent model in {directory} is inconsistent")
    return artifact


class IntentModel:
    """Probabilities of the built-in intents for a reply's features."""

    def __init__(self, artifact: ModelArtifact) -> None:
        self.artifact = artifact
        self.classes: tuple[str, ...] = artifact.classes
        self._index = {feature: i for i, feature in enumerate(artifact.vocabulary)}
        self._idf = artifact.idf.astype(np.float64)
        self._coef = artifact.coef.astype(np.float64)
        self._intercept = artifact.intercept.astype(np.float64)
        self._temperature = artifact.temperature
        self.max_idf = float(self._idf.max()) if len(self._idf) else 1.0

    @classmethod
    def load(cls, directory: Path | None = None) -> IntentModel:
        return cls(read_artifact(directory or shipped_directory()))

    def idf(self, feature: str) -> float | None:
        """The feature's IDF weight (None: not in the vocabulary)."""
        index = self._index.get(feature)
        return None if index is None else float(self._idf[index])

    def probabilities(self, feature_list: Sequence[str]) -> Mapping[str, float]:
        """Each class's calibrated probability (they add up to 1)."""
        index = self._index
        counts = Counter(index[f] for f in feature_list if f in index)
        logits = self._intercept.copy()
        if counts:
            columns = np.fromiter(counts.keys(), dtype=np.intp, count=len(counts))
            weights = 1.0 + np.log(
                np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            )
            weights *= self._idf[columns]
            weights /= np.linalg.norm(weights)
            logits += weights @ self._coef[columns]
        logits /= self._temperature
        logits -= logits.max()
        exp = np.exp(logits)
        exp /= exp.sum()
        return dict(zip(self.classes, exp.tolist(), strict=True))


__all__ = [
    "ARTIFACT_FILES",
    "IntentModel",
    "ModelArtifact",
    "read_artifact",
    "shipped_directory",
    "write_artifact",
]
