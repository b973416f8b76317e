"""One contract, every pipeline kind: each shipped CI-sized model runs through the same checks."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from volsynth import GenerationRequest, load_pipeline
from volsynth.cli import main
from volsynth.data.phantom import write_phantom_dataset
from volsynth.errors import ConfigError
from volsynth.io import read_label, read_volume
from volsynth.pipelines import Pipeline
from volsynth.pipelines.base import OPTION_NAMES

MODELS = Path(__file__).resolve().parents[2] / "models"
# model -> (kind, mask labels for a phantom mask or None when the model takes no mask, an option it refuses)
KINDS = {
    "tiny-abdomen": ("latent", "liver=1,portal_vein=2,hepatic_vein=3,tumour=4", "--refiner-guidance"),
    "tiny-sgd": ("segmentation-guided", "liver=1,vessels=2+3,tumour=4", "--controlnet-scale"),
    "tiny-hierarchical": ("hierarchical", None, "--mask-guidance"),
}


@pytest.fixture(scope="module")
def phantom_mask(tmp_path_factory) -> Path:
    root = write_phantom_dataset("abdomen-ct", tmp_path_factory.mktemp("ph") / "ds", cases=1, size=32, seed=3,
                                 progress=False)
    return next((root / "labelsTr").glob("*.nii.gz"))


def _args(name: str, mask: Path, out: Path, *extra: str) -> list[str]:
    labels = KINDS[name][1]
    given = ["--mask", str(mask), "--mask-labels", labels] if labels else ["--prompt", "Mild emphysema."]
    return ["generate", str(MODELS / name), *given, "--steps", "2", "--seed", "5", "--out", str(out),
            "--no-progress", *extra]


@pytest.mark.parametrize("name", sorted(KINDS))
def test_the_kind_and_its_options(name):
    pipe = load_pipeline(MODELS / name)
    assert isinstance(pipe, Pipeline) and pipe.kind == KINDS[name][0]
    assert pipe.options <= set(OPTION_NAMES)
    refused = KINDS[name][2].removeprefix("--").replace("-", "_")
    assert refused not in pipe.options
    with pytest.raises(ConfigError, match=KINDS[name][2]):
        pipe(GenerationRequest(seed=0, **{refused: 2.0}))


@pytest.mark.parametrize("name", sorted(KINDS))
def test_same_seed_same_bytes_and_the_mask_geometry_kept(name, phantom_mask, tmp_path):
    for run in ("a", "b"):
        assert main(_args(name, phantom_mask, tmp_path / run)) == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for file in files:
        if file.endswith(".nii.gz"):
            a, b = read_volume(tmp_path / "a" / file), read_volume(tmp_path / "b" / file)
            assert np.array_equal(a.array, b.array) and np.array_equal(a.affine, b.affine), file
            digest = [hashlib.sha256((tmp_path / r / file).read_bytes()).hexdigest() for r in ("a", "b")]
            assert digest[0] == digest[1], f"{file}: same voxels, different file bytes"
    image = read_volume(next((tmp_path / "a").glob("*_image.nii.gz")))
    if KINDS[name][1]:  # a mask-guided volume comes back on the mask's own grid
        mask = read_label(phantom_mask)
        assert image.shape == mask.shape and np.allclose(image.affine, mask.affine, atol=1e-5)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_refused_option_leaves_out_untouched(name, phantom_mask, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(name, phantom_mask, out, KINDS[name][2], "2")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and KINDS[name][2] in err, err
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_guidance_sweep_runs_on_every_kind(name, phantom_mask, tmp_path):
    labels = KINDS[name][1]
    given = ["--mask", str(phantom_mask), "--mask-labels", labels] if labels else ["--prompt", "Mild emphysema."]
    out = tmp_path / "sweep.png"
    assert main(["sweep", str(MODELS / name), *given, "--text-guidance", "1,2", "--steps", "2", "--out", str(out),
                 "--no-progress"]) == 0
    cells = json.loads(out.with_suffix(".json").read_text())["cells"]
    assert out.read_bytes()[:4] == b"\x89PNG" and [c["text_scale"] for c in cells] == [1.0, 2.0]
