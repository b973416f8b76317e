"""Memorisation: an exact copy of a training volume is flagged, a different volume is not; thresholds
come from real-vs-real nearest neighbours."""

import numpy as np
import pytest

from volsynth.data.phantom import generate_case
from volsynth.errors import ConfigError
from volsynth.evaluation import RandomConvExtractor
from volsynth.evaluation.memorization import check_memorization, cosine_matrix, leave_one_out_nearest, threshold_of
from volsynth.io import Volume

WINDOW = (-200.0, 300.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def phantom(kind: str, seed: int) -> Volume:
    case = generate_case(kind, seed, size=16)
    return Volume(case.image, case.affine, modality="CT")


@pytest.fixture(scope="module")
def training() -> list[Volume]:
    return [phantom("abdomen-ct", seed) for seed in range(5)]


def test_exact_copy_flagged_and_different_volume_not(training):
    copy = training[2].with_array(training[2].array.copy())
    different = phantom("chest-ct", 7)
    result = check_memorization([copy, different], training, RandomConvExtractor(seed=0, image_size=32),
                                generated_ids=["copy", "other"], training_ids=[f"t{i}" for i in range(5)],
                                size=16, slices_per_volume=4, intensity_range=WINDOW, progress=False)
    first, second = result["per_volume"]
    assert first["ssim"]["nearest"] == "t2" and first["feature_cosine"]["nearest"] == "t2"
    assert first["ssim"]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert first["feature_cosine"]["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert first["near_copy"] and first["ssim"]["flagged"] and first["feature_cosine"]["flagged"]
    assert not second["near_copy"]
    assert result["near_copies"] == 1 and result["fraction_near_copies"] == 0.5
    # the threshold is the largest real-vs-real nearest similarity
    for metric in ("ssim", "feature_cosine"):
        assert result["thresholds"][metric] == pytest.approx(max(result["real_vs_real_nearest"][metric]))
        assert result["thresholds"][metric] < 1.0


def test_quantile_threshold_and_helpers():
    similarity = np.array([[1.0, 0.2, 0.5], [0.2, 1.0, 0.4], [0.5, 0.4, 1.0]])
    nearest = leave_one_out_nearest(similarity)
    assert nearest.tolist() == [0.5, 0.4, 0.5]
    assert threshold_of(nearest) == 0.5
    assert threshold_of(nearest, 0.5) == pytest.approx(0.5)
    assert cosine_matrix(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 3.0]])).tolist() == [[1.0, 0.0]]


def test_needs_two_training_volumes(training):
    with pytest.raises(ConfigError, match="at least 2 training"):
        check_memorization(training[:1], training[:1], RandomConvExtractor(), progress=False)
