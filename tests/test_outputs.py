"""No command destroys what it did not create: an existing output that a command did not write is refused with a
one-line error (exit 2) and left as it was, or written into without deleting anything."""

import shutil

import pytest

from tests.conftest import make_case
from volsynth.cli import main
from volsynth.io import write_volume

USER_FILE = "my-notes.txt"


def _folder_with_a_user_file(path):
    path.mkdir(parents=True)
    (path / USER_FILE).write_text("not volsynth's")
    return path


def _kept(path):
    return (path / USER_FILE).read_text() == "not volsynth's"


def _refused(capsys, argv, path):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert _kept(path)


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    out = _folder_with_a_user_file(tmp_path / "d")
    _refused(capsys, ["demo", "--out", str(out), "--tiny", "--cases", "2", "--size", "32"], out)
    assert sorted(p.name for p in out.iterdir()) == [USER_FILE]


def test_phantom_refuses_a_non_empty_folder(tmp_path, capsys):
    out = _folder_with_a_user_file(tmp_path / "p")
    _refused(capsys, ["phantom", "abdomen-ct", str(out), "--cases", "1", "--size", "16", "--no-progress"], out)


def test_prepare_overwrite_replaces_only_a_prepared_folder(nnunet_dataset, tmp_path, capsys):
    out = _folder_with_a_user_file(tmp_path / "prep")
    _refused(capsys, ["prepare", str(nnunet_dataset), str(out), "--size", "16", "--overwrite", "--no-progress"], out)
    shutil.rmtree(out)
    assert main(["prepare", str(nnunet_dataset), str(out), "--size", "16", "--no-progress"]) == 0
    assert main(["prepare", str(nnunet_dataset), str(out), "--size", "16", "--overwrite", "--no-progress"]) == 0


def test_evaluate_refuses_a_folder_with_no_earlier_evaluation(nnunet_dataset, tmp_path, capsys):
    out = _folder_with_a_user_file(tmp_path / "report")
    _refused(capsys, ["evaluate", "--real", str(nnunet_dataset), "--generated", str(nnunet_dataset), "--out", str(out),
                      "--no-progress"], out)


def test_convert_overwrite_does_not_replace_a_foreign_folder(tmp_path, capsys):
    image, _ = make_case()
    source = write_volume(image, tmp_path / "ct.nii.gz")
    series = _folder_with_a_user_file(tmp_path / "series")
    _refused(capsys, ["convert", str(source), str(series), "--overwrite"], series)
    fresh = tmp_path / "fresh"
    assert main(["convert", str(source), str(fresh)]) == 0  # a series volsynth wrote may be replaced
    assert main(["convert", str(source), str(fresh), "--overwrite"]) == 0


def test_edit_refuses_an_existing_output_file(tmp_path, capsys):
    _, label = make_case()
    mask = write_volume(label, tmp_path / "mask.nii.gz")
    target = tmp_path / "edited.nii.gz"
    target.write_bytes(b"mine")
    assert main(["edit", str(mask), str(target), "--remove-lesion", "all"]) == 2
    assert target.read_bytes() == b"mine"


def test_generate_writes_beside_other_files_and_replaces_none(tiny_model, tmp_path, capsys):
    out = _folder_with_a_user_file(tmp_path / "gen")
    argv = ["generate", str(tiny_model), "--prompt", "liver", "--steps", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0 and _kept(out)
    image = out / "job000_00_image.nii.gz"
    before = image.read_bytes()
    _refused(capsys, argv, out)  # the same run again would replace its files: refused
    assert image.read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0 and _kept(out)


@pytest.mark.parametrize("run_folder", [True, False])
def test_generate_from_a_run_folder(tiny_model, tmp_path, capsys, run_folder):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: x\n")
    if run_folder:
        shutil.copytree(tiny_model, run / "model")
        assert main(["generate", str(run), "--prompt", "liver", "--steps", "1", "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 0
        assert (tmp_path / "o" / "job000_00.json").is_file()
    else:  # a run whose model is not assembled yet says so
        assert main(["generate", str(run), "--prompt", "liver", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
        assert "has no model yet" in capsys.readouterr().err and not (tmp_path / "o").exists()
