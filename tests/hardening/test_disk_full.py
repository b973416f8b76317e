"""A full disk during ``generate``, ``prepare``, a training checkpoint and ``evaluate``: one ``error:`` line and exit
code 2, nothing half-written under a final name, and the previous checkpoint whole and resumable."""

from __future__ import annotations

import pytest

from tests.conftest import write_nnunet
from tests.hardening.conftest import TINY_MODEL, files_under, fill, leftovers, one_error_line
from tests.training.helpers import autoencoder_stage, train
from volsynth.cli import main
from volsynth.errors import VolsynthError
from volsynth.io import read_volume
from volsynth.models.checkpoint import latest_checkpoint, load_checkpoint

FULL = "no space left on device"


def _fails_cleanly(capsys, args: list[str]) -> str:
    """Run the CLI; it must exit 2 with one error line saying the disk is full."""
    code = main(args)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2, line
    assert FULL in line.lower() and ".partial-" not in line, line  # names the final output, not a temporary
    return line


def test_generate_on_a_full_disk(small_disk, capsys):
    out = small_disk / "generated"
    fill(small_disk)
    line = _fails_cleanly(capsys, ["generate", str(TINY_MODEL), "--out", str(out), "--prompt", "liver",
                                   "--steps", "2", "--no-progress"])
    assert "job000_00" in line  # names the file it could not write
    assert files_under(small_disk) == [] and leftovers(small_disk) == []


def test_generate_fills_the_disk_half_way(small_disk, capsys):
    """Space for some volumes but not all: the ones written are whole, the rest absent, a rerun completes."""
    out = small_disk / "generated"
    filler = fill(small_disk, leave=260 * 1024)  # room for about two volumes and their sidecars (~115 KiB each)
    _fails_cleanly(capsys, ["generate", str(TINY_MODEL), "--out", str(out), "--prompt", "liver", "--n", "6",
                            "--steps", "2", "--no-progress"])
    written = files_under(out)
    assert written and leftovers(small_disk) == []
    sidecars = [name for name in written if name.endswith(".json")]
    assert all(name.replace(".json", "_image.nii.gz") in written for name in sidecars)  # a sidecar: its image is there
    for name in written:
        if name.endswith(".nii.gz"):
            assert read_volume(out / name).shape == (32, 32, 32)  # every file under a final name reads whole
    filler.unlink()
    assert main(["generate", str(TINY_MODEL), "--out", str(out), "--prompt", "liver", "--n", "6", "--steps", "2",
                 "--no-progress", "--overwrite"]) == 0
    assert len([n for n in files_under(out) if n.endswith(".json")]) == 6


def test_prepare_on_a_full_disk(small_disk, tmp_path, capsys):
    raw = write_nnunet(tmp_path / "raw", cases=2)
    fill(small_disk)
    line = _fails_cleanly(capsys, ["prepare", str(raw), str(small_disk / "prepared"), "--size", "16",
                                   "--no-progress"])
    assert f"{small_disk / 'prepared'}:" in line
    assert files_under(small_disk) == [] and leftovers(small_disk) == []
    assert not (small_disk / "prepared").exists()


def test_checkpoint_on_a_full_disk_keeps_the_previous_one(small_disk, prepared_tiny):
    out = small_disk / "autoencoder"
    train(autoencoder_stage(prepared_tiny), out, steps=2, checkpoint_every=2)
    first = latest_checkpoint(out / "checkpoints")
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    filler = fill(small_disk, leave=32 * 1024)  # room for the metrics lines, not for a checkpoint
    with pytest.raises(VolsynthError) as caught:
        train(autoencoder_stage(prepared_tiny), out, steps=4, checkpoint_every=2)
    assert FULL in caught.value.one_line()
    assert "\n" not in caught.value.one_line()
    assert latest_checkpoint(out / "checkpoints") == first
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before  # intact to the byte
    load_checkpoint(first, with_training_state=True)  # checksums verified
    assert leftovers(small_disk) == []
    filler.unlink()
    resumed = train(autoencoder_stage(prepared_tiny), out, steps=4, checkpoint_every=2)
    assert resumed.name == "checkpoint-0000004"
    steps = [line for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [int(s.split('"step": ')[1].split(",")[0]) for s in steps] == [1, 2, 3, 4]


def test_evaluate_on_a_full_disk(small_disk, tmp_path, capsys):
    from tests.evaluation.test_evaluate import write_generated
    from volsynth.data.phantom import write_phantom_dataset

    real = write_phantom_dataset("abdomen-ct", tmp_path / "real", cases=4, size=16, spacing=20.0, seed=0,
                                 progress=False)
    generated = write_generated(tmp_path / "generated", seeds=(100, 101, 102))
    fill(small_disk)
    _fails_cleanly(capsys, ["evaluate", "--real", str(real), "--generated", str(generated), "--out",
                            str(small_disk / "report"), "--slices", "4", "--no-progress"])
    assert files_under(small_disk) == [] and leftovers(small_disk) == []
