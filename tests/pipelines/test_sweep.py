"""Guidance sweeps: each cell is the plain call with those scales; the montage and the CLI."""

import numpy as np
import pytest

from tests.conftest import make_case
from volsynth.cli import main
from volsynth.io import write_volume
from volsynth.pipelines.generate import SynthesisPipeline
from volsynth.pipelines.sweep import guidance_sweep, save_sweep_montage


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return SynthesisPipeline.from_pretrained(tiny_model)


@pytest.fixture
def mask():
    return make_case(seed=5, shape=(16, 16, 16), spacing=(2.0, 2.0, 2.0))[1]


def test_each_cell_equals_the_plain_call_and_the_scales_matter(pipe, mask, tmp_path):
    call = {"prompt": "liver lesion", "mask": mask, "seed": 3, "steps": 2}
    grid = guidance_sweep(pipe, [1.0, 4.0], [1.0, 3.0], progress=False, **call)
    assert [len(row) for row in grid] == [2, 2]
    plain = pipe(**call, text_guidance=4.0, mask_guidance=3.0)
    np.testing.assert_array_equal(grid[1][1].image.array, plain.image.array)
    assert grid[0][0].sidecar["text_guidance"] == 1.0 and grid[1][1].sidecar["mask_guidance"] == 3.0
    path = save_sweep_montage(tmp_path / "sweep.png", grid, [1.0, 4.0], [1.0, 3.0], window=(-200, 300))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_sweep_writes_a_png_and_rejects_bad_scales(tiny_model, mask, tmp_path):
    write_volume(mask, tmp_path / "mask.nii.gz")
    base = ["sweep", str(tiny_model), "--mask", str(tmp_path / "mask.nii.gz"), "--steps", "2", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "s.png"), "--text-guidance", "1,2", "--mask-guidance", "1,2"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert main([*base, "--out", str(tmp_path / "bad.png"), "--text-guidance", "1,x"]) == 2
    assert main([*base, "--out", str(tmp_path / "bad.jpg")]) == 2
    assert not (tmp_path / "bad.png").exists() and not (tmp_path / "bad.jpg").exists()


def test_a_failed_figure_write_leaves_nothing_behind(tmp_path, monkeypatch):
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from volsynth.viz import save_figure

    fig = plt.figure()
    def half_written(target, **options):
        Path(target).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", half_written)
    from volsynth.errors import WriteError

    with pytest.raises(WriteError, match="out.png: cannot write \\(disk full\\)"):  # one line naming the output
        save_figure(fig, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []
