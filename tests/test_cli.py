import re
import subprocess
import sys

import click
import numpy as np
import pytest
import typer

from tests.conftest import make_case, oblique_direction
from volsynth.cli import app, main
from volsynth.io import read_label, read_volume, write_volume


def test_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "volsynth.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("convert", "verify", "prepare", "phantom", "demo"):
        assert command in result.stdout


def test_the_command_line_loads_without_torch():
    """``volsynth --help`` and ``volsynth train --help`` must not wait for torch and MONAI to load."""
    code = ("import sys; from volsynth.cli import main; main(['train', '--help']); "
            "sys.exit(3 if 'torch' in sys.modules or 'monai' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--resume" in result.stdout


def test_train_help_names_the_keys_a_resume_may_change():
    from volsynth.training.commands import RESUMABLE
    from volsynth.training.runner import RESUMABLE_KEYS

    assert RESUMABLE == RESUMABLE_KEYS


def test_no_help_text_is_taken_for_rich_markup():
    """Rich drops '[lowercase ...]' from help as a markup tag ('Sampling steps [model's, else 30].' printed as
    'Sampling steps .'), so no command or option help may contain one."""
    tag = re.compile(r"(?<!\\)\[[a-z#/@][^\[]*?\]")

    def texts(command):
        yield command.name, command.help or ""
        for param in command.params:
            yield f"{command.name} {param.name}", getattr(param, "help", None) or ""
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                yield from texts(sub)

    found = [f"{where}: {text}" for where, text in texts(typer.main.get_command(app)) if tag.search(text)]
    assert not found


def test_convert_nifti_to_dicom_and_back(tmp_path, capsys):
    image, label = make_case(shape=(16, 14, 5), direction=oblique_direction(30))
    image = image.with_array(np.rint(image.array))
    write_volume(image, tmp_path / "ct.nii.gz")
    write_volume(label, tmp_path / "seg.nii.gz")
    assert main(["convert", str(tmp_path / "ct.nii.gz"), str(tmp_path / "ct_dicom"), "--modality", "CT"]) == 0
    assert len(list((tmp_path / "ct_dicom").glob("*.dcm"))) == 5
    assert main(["convert", str(tmp_path / "ct_dicom"), str(tmp_path / "back.nii.gz")]) == 0
    back = read_volume(tmp_path / "back.nii.gz").reoriented("RAS")
    ras = image.reoriented("RAS")
    np.testing.assert_allclose(back.affine, ras.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, ras.array)
    assert main(["convert", str(tmp_path / "seg.nii.gz"), str(tmp_path / "seg.mha"), "--label"]) == 0
    np.testing.assert_array_equal(read_label(tmp_path / "seg.mha").array, label.array)
    out = capsys.readouterr().out
    assert re.search(r"spacing \d[\d.]* x \d[\d.]* x \d[\d.]* mm  orientation", out)  # the numbers, not markup


@pytest.mark.parametrize("args, message", [
    (["missing.nii.gz", "out.nii.gz"], "file not found"),
    (["in.nii.gz", "out.xyz"], "unknown volume format"),
    (["in.nii.gz", "out_dicom", "--compression", "zip"], "unknown DICOM compression"),
])
def test_convert_bad_input_exit_2(tmp_path, monkeypatch, capsys, args, message):
    image, _ = make_case(shape=(8, 8, 4))
    write_volume(image, tmp_path / "in.nii.gz")
    monkeypatch.chdir(tmp_path)
    assert main(["convert", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]  # nothing half-written


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(Exception, match="file not found"):
        main(["--debug", "convert", str(tmp_path / "missing.nii.gz"), str(tmp_path / "o.nii.gz")])
