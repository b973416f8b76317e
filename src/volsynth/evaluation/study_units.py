"""The units of work of ``volsynth study run`` and their bookkeeping: every unit writes its result atomically
under the study folder and is skipped when that result is there, so a killed study run again continues where
it stopped. DIR/log.jsonl gets one line per unit finished (a unit redone would appear twice).

Folders under DIR::

    study.yaml        the study spec as first run (a resume with another spec is refused)
    split.json        the real training and test case ids (checked on resume)
    train-data/       the n_real training cases as a dataset of their own: the generator's only data
    generator/        the generator's training run (volsynth train --out), resumable by itself
    synthetic/SET/    generated pairs: <id>_image, <id>_label, <id>.json sidecar (written last: the unit's mark)
    runs/RUN/         segmentor/ (a trained segmentor), scores.json (its Dice and NSD on the test cases)
    adherence/        text-guided lesion sizes measured in the image, and the real cases' own measurement
    synthetic.json    the pair ids of each synthetic set (written once every set is made)

A study record (``StudyRecord``, ``volsynth study run --record REC``) is a small copy of what the units found, to
keep in version control: a study that outlives its folder (a new checkout) continues from it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage as ndi

from volsynth.data.dataset import Dataset, write_dataset
from volsynth.data.phantom.measure import FULL_CONNECTIVITY
from volsynth.errors import ConfigError, VolsynthError
from volsynth.evaluation.adherence import measure_lesions
from volsynth.evaluation.segmentor import read_case
from volsynth.evaluation.study_spec import LATE_KEYS, SPEC_VERSION, StudySpec, spec_changes
from volsynth.io.atomic import atomic_output
from volsynth.io.formats import write_volume
from volsynth.io.jsonfile import read_json, write_json
from volsynth.io.volume import LabelMap
from volsynth.models.checkpoint import sha256_file
from volsynth.pipelines.base import GenerationRequest, Pipeline
from volsynth.pipelines.edit import insert_lesion, remove_lesions
from volsynth.pipelines.masks import MaskWarning
from volsynth.pipelines.sidecar import sidecar_record, write_sidecar
from volsynth.training.recipe_schema import ALL_STAGES
from volsynth.training.runner import run_recipe

SPEC_FILE, SPLIT_FILE, LOG_FILE = "study.yaml", "split.json", "log.jsonl"
TRAIN_DATA, GENERATOR, RUNS = "train-data", "generator", "runs"
SYNTHETIC_INDEX = "synthetic.json"
OUTPUTS = ("study.json", "study.html", "study.md", "study-dice.png")


class StudyRecord:
    """REC: the small results of a study's units, copied there as each unit finishes, and read back into a study
    folder that lacks them. It holds the spec, the split, the log, the trained generator (its model folder, which
    remakes the synthetic pairs a segmentor still needs, and its stages' training curves), the synthetic sets' ids
    and sidecars (a remade pair is checked against its sidecar's sha256), each segmentor's scores and record (not
    its weights), the adherence measurements and the outputs. Training data, synthetic volumes and segmentor
    weights stay out (except those of ``whole_runs``: the study's own adherence segmentor): they are remade from
    the dataset and the generator when a unit still needs them."""

    def __init__(self, root: str | Path, whole_runs: tuple[str, ...] = ()) -> None:
        self.root, self.whole_runs = Path(root), set(whole_runs)

    def files_for(self, unit: str) -> list[str]:
        """The paths (relative to DIR) that a finished unit adds to the record."""
        if unit in ("split", "spec"):
            return [SPEC_FILE, SPLIT_FILE]
        if unit == GENERATOR:  # the model, and each stage's training curve
            return [f"{GENERATOR}/model", *(f"{GENERATOR}/{stage}/metrics.jsonl" for stage in ALL_STAGES)]
        if unit == "synthetic":
            return [SYNTHETIC_INDEX]
        if unit.startswith("synthetic/"):
            return [f"{unit}.json"]
        if unit.startswith(f"{RUNS}/") and unit.endswith("/scores"):
            run = unit.rsplit("/", 1)[0]
            kept = "segmentor" if run.split("/", 1)[1] in self.whole_runs else "segmentor/meta.json"
            return [f"{run}/scores.json", f"{run}/{kept}"]
        if unit.startswith("adherence/"):
            return [f"{unit}.json"]
        if unit == "outputs":
            return list(OUTPUTS)
        return []

    def keep(self, folder: StudyFolder, unit: str) -> None:
        """Copy a finished unit's results (and the log) from DIR into REC, each file atomically."""
        self._copy_from(folder, self.files_for(unit))

    def _copy_from(self, folder: StudyFolder, paths: list[str]) -> None:
        """Copy ``paths`` (relative) and the log from DIR into REC; a folder already in REC is not copied again."""
        for relative in [*paths, LOG_FILE]:
            source, target = folder.path(relative), self.root / relative
            if source.exists() and not (source.is_dir() and target.is_dir()):
                _copy(source, target)

    def check(self, spec: StudySpec) -> None:
        """Refuse a record that is not a folder, or whose study the spec may not continue (nothing is written)."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(self.root, "the study record is not a folder", "give a folder for --record")
        if self.root.is_dir():
            StudyFolder(self.root).check_spec(spec)

    def restore(self, folder: StudyFolder) -> list[str]:
        """Copy into DIR what REC holds and DIR lacks (never a synthetic sidecar: its volumes are not in REC, so
        the pair is remade); returns the paths copied."""
        if not self.root.is_dir():
            return []
        copied = []
        for source in sorted(self.root.rglob("*")):
            relative = source.relative_to(self.root)
            if not source.is_file() or relative.parts[0] == "synthetic" or relative.name.startswith("."):
                continue
            if relative.parts[0] == GENERATOR:  # the model folder is copied whole; the curves stay in REC
                if relative.parts[1:2] != ("model",):
                    continue
                relative = Path(GENERATOR, "model")
                source = self.root / relative
            target = folder.path(*relative.parts)
            if not target.exists():
                _copy(source, target)
                copied.append(relative.as_posix())
        return copied

    def sync(self, folder: StudyFolder) -> None:
        """Copy into REC the results of every unit DIR's log names that REC lacks (a record given to a study
        already under way)."""
        paths = dict.fromkeys(p for unit in ["split", *folder.units_done()] for p in self.files_for(unit))
        self._copy_from(folder, [p for p in paths if folder.path(p).exists() and not (self.root / p).exists()])

    def sidecar(self, set_name: str, pair_id: str) -> dict | None:
        """The recorded sidecar of a synthetic pair (None when REC has none)."""
        path = self.root / "synthetic" / set_name / f"{pair_id}.json"
        return read_json(path) if path.is_file() else None


def _copy(source: Path, target: Path) -> None:
    """Copy a file or a folder to ``target`` atomically (replacing what is there)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as tmp:
        if source.is_dir():
            shutil.copytree(source, tmp)
        else:
            shutil.copy2(source, tmp)


class StudyFolder:
    """The study folder DIR: its paths, its log of finished units, and the checks made on resume."""

    def __init__(self, root: str | Path, log: Callable[[str], None] = print,
                 record: StudyRecord | None = None) -> None:
        self.root, self.say, self.record = Path(root), log, record

    def path(self, *parts: str) -> Path:
        """A path under DIR."""
        return self.root.joinpath(*parts)

    def finished(self, unit: str, detail: dict | None = None) -> None:
        """Record a finished unit in DIR/log.jsonl (after its result was written)."""
        line = json.dumps({"unit": unit, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **(detail or {})})
        with open(self.path(LOG_FILE), "a") as handle:
            handle.write(line + "\n")
        if self.record is not None:
            self.record.keep(self, unit)
        self.say(f"done: {unit}")

    def units_done(self) -> list[str]:
        """Every unit named in DIR/log.jsonl, in order (duplicates kept)."""
        path = self.path(LOG_FILE)
        if not path.is_file():
            return []
        return [json.loads(line)["unit"] for line in path.read_text().splitlines() if line.strip()]

    def check_target(self) -> None:
        """Refuse a folder that is not empty and holds no study (nothing is written into it)."""
        if not self.path(SPEC_FILE).is_file() and self.root.is_dir() and any(self.root.iterdir()):
            raise ConfigError(self.root, "the output folder is not empty and holds no study (no study.yaml)",
                              "run into a new or empty --out; nothing was written")

    def check_spec(self, spec: StudySpec) -> list[str]:
        """The keys ``spec`` changes from the spec stored here (none on a first run); ConfigError when one of them
        may not change any more. Writes nothing."""
        path = self.path(SPEC_FILE)
        if not path.is_file():
            return []
        changes = spec_changes(yaml.safe_load(path.read_text()) or {}, {"version": SPEC_VERSION, **spec.to_dict()})
        if any(not self._late_change(change) for change in changes):
            raise ConfigError(path, f"this study was started with other settings: {', '.join(changes)}",
                              "resume with the same study file, or run into a new --out (segmentor and "
                              "adherence settings may change until those stages have started)")
        return changes

    def pin_spec(self, spec: StudySpec) -> None:
        """Store the spec on the first run; on a resume, refuse one that changes anything but the summary."""
        self.check_target()
        changes = self.check_spec(spec)
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.path(SPEC_FILE)) as tmp:
            tmp.write_text(yaml.safe_dump({"version": SPEC_VERSION, **spec.to_dict()}, sort_keys=False))
        if changes:  # logged after the new spec is written, so that a record keeps the spec now in force
            self.finished("spec", {"changed": changes})

    def _late_change(self, change: str) -> bool:
        """Whether a changed key concerns a stage that has not started (its folder is missing or empty)."""
        for key, stage in LATE_KEYS.items():
            if change == key or change.startswith(key + "."):
                folder = self.path(stage)
                return not (folder.is_dir() and any(folder.iterdir()))
        return False

    def pin_split(self, split: dict) -> dict:
        """Save the split on the first run; on a resume, the split must be the one saved."""
        path = self.path(SPLIT_FILE)
        if path.is_file():
            saved = read_json(path)
            if {k: saved.get(k) for k in split} != split:
                raise ConfigError(path, "the dataset's split differs from the one this study started with",
                                  "restore the dataset (same case ids and files), or run into a new --out")
            return saved
        write_json(path, split)
        self.finished("split", {"train": split["train"], "test": split["test"]})
        return split


def arm_names(spec: StudySpec) -> list[str]:
    """The arms of a study, ratios expanded: real, real+synthetic x1, ..., synthetic x1, ..., balance."""
    names = []
    for arm in spec.arms:
        if arm in ("real+synthetic", "synthetic"):
            names += [f"{arm} x{r}" for r in sorted(spec.synthetic.ratios)]
        else:
            names.append(arm)
    return sorted(set(names), key=names.index)


def run_name(arm: str, architecture: str, seed: int) -> str:
    """The folder name of one segmentor run under DIR/runs."""
    return f"{arm.replace('+', '_').replace(' ', '_')}_{architecture}_seed{seed}"


def own_adherence_run(spec: StudySpec) -> str:
    """The run whose segmentor measures text adherence when the spec names none: real, first architecture and
    seed (its weights are kept in a study record)."""
    return run_name("real", spec.architectures[0], spec.seeds[0])


def balance_count(n_real: int, n_large: int, share: float) -> int:
    """Large-lesion pairs to add so that large cases make up at least ``share`` of the training set."""
    return max(0, math.ceil((share * n_real - n_large) / (1.0 - share) - 1e-9))


def split_ids(ids: list[str], n_real: int, n_test: int) -> tuple[list[str], list[str]]:
    """(training ids, test ids): the last ``n_test`` sorted ids are held out, the first ``n_real`` others train."""
    ids = sorted(ids)
    if n_test >= len(ids) or n_real > len(ids) - n_test:
        raise ConfigError(None, f"cannot take {n_real} training and {n_test} test cases from {len(ids)} labelled "
                          "cases", "lower n_real or n_test, or use a larger dataset")
    return ids[:n_real], ids[-n_test:]


def write_training_subset(folder: StudyFolder, dataset: Dataset, train_ids: list[str]) -> Path:
    """DIR/train-data: the training cases (image, label, report) as a dataset of their own, written once."""
    out = folder.path(TRAIN_DATA)
    if (out / "dataset.json").is_file():
        return out
    cases = {c.case_id: c for c in dataset.cases}
    with atomic_output(out, overwrite=False) as tmp:
        rows = []
        for case_id in train_ids:
            image, label = read_case(cases[case_id])
            rows.append((case_id, image, label, cases[case_id].report, cases[case_id].facts))
        write_dataset(tmp, rows, dataset.labels, dataset.channel_names, f"{dataset.name}-train",
                      f"the {len(train_ids)} training cases of a volsynth study of {dataset.root.name}")
    folder.finished("train-data", {"cases": train_ids})
    return out


def train_generator(folder: StudyFolder, spec: StudySpec, data: Path, progress: bool) -> Path:
    """The generator recipe trained on DIR/train-data only (volsynth train; resumes a run under way)."""
    out = folder.path(GENERATOR)
    model = out / "model"
    if (model / "meta.json").is_file():
        return model
    overrides = [*spec.generator.set, f"data.dataset={data}"]  # last: the study's data wins over any --set
    model = run_recipe(spec.generator.recipe, out, progress=progress, log=folder.say, overrides=overrides,
                       resume=(out / "recipe.yaml").is_file(), profile=spec.generator.profile)
    folder.finished("generator", {"recipe": spec.generator.recipe, "dataset": str(data)})
    return model


# -- lesions ----------------------------------------------------------------------------------------------------

def largest_equivalent_diameter_mm(label: LabelMap, class_id: int) -> float:
    """Equivalent diameter (of the sphere of the same volume) of the class's largest 26-connected component."""
    components, count = ndi.label(np.asarray(label.array) == class_id, structure=FULL_CONNECTIVITY)
    if count == 0:
        return 0.0
    voxels = np.bincount(components.ravel())[1:].max()
    volume = float(voxels) * float(np.prod(label.spacing))
    return (6.0 * volume / math.pi) ** (1.0 / 3.0)


def class_id(labels: dict[str, int], name: str, where: str) -> int:
    """The id of a class name in a dataset's labels (ConfigError naming the spec key otherwise)."""
    if name not in labels:
        raise ConfigError(None, f"{where}: no class '{name}' in the dataset", f"its classes: {', '.join(labels)}")
    return int(labels[name])


def edit_mask(mask: LabelMap, mode: str, diameters: list[float], organ: int, lesion: int,
              rng: np.random.Generator) -> tuple[LabelMap, list[dict]]:
    """The mask with lesions kept, one inserted (diameter drawn from ``diameters``' range) or every lesion moved
    to a random place in the organ (same diameters); the inserted lesions' facts."""
    if mode == "keep":
        return mask, []
    sizes = []
    if mode == "move":
        sizes = measure_lesions(mask, [lesion])
        if sizes:
            mask = remove_lesions(mask, lesion_id=lesion, fill_id=organ)
    if not sizes:
        sizes = [float(rng.uniform(*diameters))]
    facts = []
    for size in sizes:
        for attempt in range(8):  # a random centre deep enough in the organ; smaller when none fits
            try:
                mask, fact = insert_lesion(mask, size * (0.85 ** attempt), organ, lesion, seed=int(rng.integers(2**31)))
                facts.append(fact)
                break
            except VolsynthError:
                continue
    return mask, facts


# -- synthetic pairs --------------------------------------------------------------------------------------------

def generate_pair(folder: StudyFolder, pipeline: Pipeline, set_name: str, pair_id: str, source: tuple[str, Path],
                  mask: LabelMap | None, prompt: str, seed: int, sampling: dict, extra: dict) -> Path:
    """One synthetic volume (and its label map when mask-guided) under DIR/synthetic/SET, its sidecar last. A mask
    with class names is mapped onto the generator's classes by name; its other classes are left out (the label map
    holds the generator's classes only)."""
    out = folder.path("synthetic", set_name)
    sidecar = out / f"{pair_id}.json"
    if sidecar.is_file():
        return sidecar
    with warnings.catch_warnings():  # the mask maps by its class names (map_mask); the others are left out
        warnings.simplefilter("ignore", MaskWarning)  # the left-out classes, on every pair
        result = pipeline(GenerationRequest(prompt=prompt, mask=mask, seed=seed, **sampling))
    image = write_volume(result.image, out / f"{pair_id}_image.nii.gz")
    label = write_volume(result.label, out / f"{pair_id}_label.nii.gz") if result.label is not None else None
    record = sidecar_record(result, pair_id, image, label, set=set_name, source_case=source[0],
                            source_label_sha256=sha256_file(source[1]) if source[1] else None,
                            labels=result.label.labels if result.label is not None else None, **extra)
    record["mask"] = None  # the edited mask is held in memory only; source_case names where it came from
    write_sidecar(sidecar, record)
    detail = {"source_case": source[0]}
    kept = folder.record.sidecar(set_name, pair_id) if folder.record is not None else None
    if kept is not None:  # a pair remade from the recorded generator: the same volume, or a note that it is not
        detail["same_as_record"] = kept.get("image_sha256") == record["image_sha256"]
        if not detail["same_as_record"]:
            folder.say(f"note: {set_name}/{pair_id} differs from the recorded pair (sha256 of the image)")
    folder.finished(f"synthetic/{set_name}/{pair_id}", detail)
    return sidecar


def pair_seed(base: int, set_name: str, index: int) -> int:
    """A pair's seed from the study seed, its set and its number (the same on every run)."""
    return int(np.random.SeedSequence([base, sum(map(ord, set_name)), index]).generate_state(1)[0])

