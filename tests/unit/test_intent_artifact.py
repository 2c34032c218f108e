"""The shipped intent model is what training the shipped corpus produces, the numpy
scoring gives scikit-learn's probabilities, and the artifact loads without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from campaign_worker.adapters.intent_model import (
    IntentModel,
    ModelArtifact,
    read_artifact,
    shipped_directory,
    write_artifact,
)
from campaign_worker.adapters.intent_training import corpus_digest, train
from campaign_worker.adapters.reply_text import extract
from campaign_worker.domain.errors import ConfigurationError
from campaign_worker.domain.labelled_replies import LabelledReply, parse_lines
from campaign_worker.domain.reply_features import features

SHIPPED = shipped_directory()


def labelled(name: str) -> list[LabelledReply]:
    with (SHIPPED / name).open(encoding="utf-8") as handle:
        return parse_lines(handle)


@pytest.fixture(scope="module")
def shipped() -> ModelArtifact:
    return read_artifact(SHIPPED)


@pytest.fixture(scope="module")
def retrained() -> ModelArtifact:
    """The shipped corpus trained again, as `make intents-model` does (about 20 s)."""
    return train(labelled("train.tsv"), calibration=labelled("dev.tsv"))


@pytest.mark.timeout(600)
def test_the_shipped_artifact_is_the_shipped_corpus_trained(
    shipped: ModelArtifact, retrained: ModelArtifact
) -> None:
    assert shipped.metadata["corpus_sha256"] == corpus_digest(labelled("train.tsv"))
    assert shipped.metadata["calibration_sha256"] == corpus_digest(labelled("dev.tsv"))
    assert retrained.classes == shipped.classes
    assert retrained.vocabulary == shipped.vocabulary
    np.testing.assert_allclose(retrained.idf, shipped.idf, rtol=0, atol=1e-6)
    np.testing.assert_allclose(retrained.coef, shipped.coef, rtol=0, atol=1e-5)
    np.testing.assert_allclose(retrained.intercept, shipped.intercept, rtol=0, atol=1e-5)
    assert retrained.temperature == pytest.approx(shipped.temperature, abs=1e-3)
    without_probes = {k: v for k, v in shipped.metadata.items() if k != "probes"}
    assert {k: v for k, v in retrained.metadata.items() if k != "probes"} == without_probes
    for text, expected in shipped.metadata["probes"].items():
        np.testing.assert_allclose(retrained.metadata["probes"][text], expected, atol=1e-5)


def test_numpy_scoring_gives_scikit_learns_probabilities(shipped: ModelArtifact) -> None:
    model = IntentModel(shipped)
    probes: dict[str, list[float]] = shipped.metadata["probes"]
    assert len(probes) >= 5
    for text, expected in probes.items():
        got = model.probabilities(features(extract(text)))
        assert list(got) == list(shipped.classes)
        np.testing.assert_allclose(list(got.values()), expected, atol=1e-4, err_msg=text)


def test_write_then_read_is_the_same_artifact(shipped: ModelArtifact, tmp_path: Path) -> None:
    write_artifact(shipped, tmp_path)
    again = read_artifact(tmp_path)
    assert again.vocabulary == shipped.vocabulary and again.classes == shipped.classes
    np.testing.assert_array_equal(again.coef, shipped.coef)
    assert again.metadata == shipped.metadata


def test_a_pickled_array_is_refused(shipped: ModelArtifact, tmp_path: Path) -> None:
    write_artifact(shipped, tmp_path)
    with (tmp_path / "model.npz").open("wb") as handle:
        np.savez(
            handle,
            classes=np.array([object()], dtype=object),
            idf=shipped.idf,
            coef=shipped.coef,
            intercept=shipped.intercept,
            temperature=np.array([1.0]),
        )
    with pytest.raises(ConfigurationError, match="cannot read the intent model"):
        read_artifact(tmp_path)


def test_a_missing_or_inconsistent_artifact_is_a_configuration_error(
    shipped: ModelArtifact, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError):
        read_artifact(tmp_path / "nothing")
    write_artifact(shipped, tmp_path)
    (tmp_path / "vocabulary.json").write_text('["c:ab"]\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="inconsistent"):
        read_artifact(tmp_path)


def test_training_is_deterministic_and_handles_two_intents() -> None:
    replies = [
        LabelledReply(intent, text)
        for intent, texts in {
            "yes": ["yes", "yes please", "sure", "ok great", "sounds good", "yep"],
            "no": ["no", "no thanks", "nope", "not now", "pass", "nah"],
        }.items()
        for text in texts
    ]
    first, second = train(replies), train(replies)
    assert first.classes == ("no", "yes") and first.coef.shape == (len(first.vocabulary), 2)
    np.testing.assert_array_equal(first.coef, second.coef)
    assert first.temperature == second.temperature
    model = IntentModel(first)
    assert max(model.probabilities(features("yes please")).items(), key=lambda kv: kv[1])[0] == (
        "yes"
    )
