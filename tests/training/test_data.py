"""Prepared cases are memory-mapped from .npy copies made once beside them: the stages index the same values the
prepared NIfTI files hold, without loading the dataset."""

import os
import shutil

import numpy as np
import torch

from volsynth.data.prepare import load_manifest
from volsynth.io.formats import read_label, read_volume
from volsynth.training.data import ARRAYS_FOLDER, CaseStack, load_prepared


def test_prepared_cases_are_memory_mapped_copies_of_the_prepared_files(prepared_tiny):
    data = load_prepared(prepared_tiny)
    entries = load_manifest(prepared_tiny)["cases"]
    assert isinstance(data.images, CaseStack) and isinstance(data.labels, CaseStack)
    assert data.images.shape[0] == len(entries) == len(data)
    for index in (0, len(entries) - 1):
        image = read_volume(prepared_tiny / entries[index]["images"][0]).array
        label = read_label(prepared_tiny / entries[index]["label"]).array
        assert torch.equal(data.images[index][0], torch.from_numpy(image.astype(np.float32)))
        assert data.labels[[index]].dtype == torch.int64
        assert torch.equal(data.labels[[index]][0], torch.from_numpy(label.astype(np.int64)))
    assert data.images[[1, 0]].shape == (2, *data.images.shape[1:])
    assert isinstance(np.load(data.images.files[0], mmap_mode="r"), np.memmap)


def test_the_copies_are_made_once_and_remade_for_a_changed_case(prepared_tiny, tmp_path):
    prepared_tiny = shutil.copytree(prepared_tiny, tmp_path / "prepared", ignore=shutil.ignore_patterns(ARRAYS_FOLDER))
    load_prepared(prepared_tiny)
    folder = prepared_tiny / ARRAYS_FOLDER
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    load_prepared(prepared_tiny)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before  # reused, not rewritten
    entry = load_manifest(prepared_tiny)["cases"][0]
    source = prepared_tiny / entry["images"][0]
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # as if prepared again
    data = load_prepared(prepared_tiny)
    assert len(list(folder.iterdir())) == len(before) + 1
    assert torch.equal(data.images[0][0], torch.from_numpy(read_volume(source).array.astype(np.float32)))
