"""The text-grounding seam on tiny random Grounding DINO and OWLv2 models: the boxes equal transformers' own
post-processing of the same model on the same image, the labels name the asked phrases, and without weights the
seeded random stand-in runs and says so."""

import numpy as np
import pytest
from text_fixtures import textured_image, transformers_boxes

from backend.config import Config
from backend.text.grounding import BadText, GroundingParameters, parse_parameters, parse_phrases
from backend.text.weights import load_grounder


@pytest.mark.parametrize("family", ["grounding-dino", "owlv2"])
def test_boxes_equal_transformers_post_processing(family, request, tmp_path):
    folder = request.getfixturevalue("grounding_dino_folder" if family == "grounding-dino" else "owlv2_folder")
    grounder, info = load_grounder(Config(text_model=str(folder), data_dir=str(tmp_path)))
    assert info.weights == "real" and grounder.family == family
    pixels = textured_image()
    phrases = ["dog", "red cat"]
    # A threshold that keeps several of the random model's boxes, so the comparison compares something.
    params = GroundingParameters(box_threshold=0.2 if family == "grounding-dino" else 0.0, max_instances=8)
    instances = grounder.ground(pixels, phrases, params)
    expected_boxes, expected_scores = transformers_boxes(folder, pixels, phrases, params)
    assert len(instances) >= 3
    boxes = np.array([instance.box for instance in instances])
    # Boxes clipped to nothing are dropped by the grounder; transformers keeps them.
    nonempty = (expected_boxes[:, 2] > expected_boxes[:, 0]) & (expected_boxes[:, 3] > expected_boxes[:, 1])
    np.testing.assert_allclose(boxes, expected_boxes[nonempty][: params.max_instances], atol=1e-4)
    np.testing.assert_allclose(
        [i.score for i in instances], expected_scores[nonempty][: params.max_instances], atol=1e-4
    )
    assert {instance.label for instance in instances} <= set(phrases)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 240 and 0 <= y0 < y1 <= 180


def test_offline_without_weights_runs_the_flagged_random_detector(tmp_path):
    config = Config(allow_download=False, data_dir=str(tmp_path))
    grounder, info = load_grounder(config)
    assert info.weights == "random" and grounder.weights == "random"
    assert "RANDOM" in info.message and "grounding-dino" in info.model_id
    instances = grounder.ground(textured_image(), ["dog"], GroundingParameters(box_threshold=0.0, max_instances=5))
    assert len(instances) == 5 and all(instance.label == "dog" for instance in instances)


@pytest.mark.parametrize(
    "text",
    [None, "", "   ", ",,, ,", "x" * 257, ",".join(f"p{i}" for i in range(17)), 42],
)
def test_unusable_text_is_refused(text):
    with pytest.raises(BadText):
        parse_phrases(text)


def test_phrases_are_trimmed_lowered_and_unique():
    assert parse_phrases(" Dog, a  red Cat. ,dog") == ["dog", "a red cat"]
    assert len(parse_phrases(",".join(f"p{i}" for i in range(16)))) == 16


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"box_threshold": 2},
        {"box_threshold": "0.3"},
        {"text_threshold": float("nan")},
        {"max_instances": 0},
        {"max_instances": 1.5},
        {"max_instances": True},
        {"colour": 1},
    ],
)
def test_unusable_parameters_are_refused(raw):
    with pytest.raises(BadText):
        parse_parameters(raw)
