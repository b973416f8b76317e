"""``volsynth study run STUDY.yaml --out DIR``: the augmentation study from a study file, resumable unit by unit.

1. split the real dataset's labelled cases (``study_units.split_ids``; saved in DIR/split.json);
2. write the training cases as DIR/train-data and train the generator recipe on them only;
3. generate the synthetic sets: mask-guided pairs from the real training masks (lesions kept, inserted or
   moved), ``max(ratios) x n_real`` of them (ratio r uses the first ``r x n_real``); large-lesion pairs for the
   balance arm;
4. train a segmentor per arm, architecture and seed (one plan, fingerprinted on the real training cases) and
   score it on the held-out real test cases;
5. generate the text-guided volumes whose prompt states a lesion size (for text adherence only: they have no label
   map, so no arm trains on them), measure their lesions in the image (``study_adherence``; before step 4 when the
   spec names the measuring segmentor and it exists) and summarise (``study_report``): DIR/study.json,
   DIR/study.html and DIR/study.md.

Arms: ``real`` (the n_real cases), ``real+synthetic xR`` (plus R x n_real synthetic pairs), ``synthetic xR``
(the synthetic pairs alone), ``balance`` (the real cases plus large-lesion pairs until cases whose largest lesion
is at least ``balance.min_diameter_mm`` make up ``balance.share`` of the training set).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from volsynth.data.plan import Plan
from volsynth.errors import ConfigError
from volsynth.evaluation.adherence import measure_lesions
from volsynth.evaluation.report import to_json_ready
from volsynth.evaluation.segmentor import (
    SegmentorSettings,
    labelled_cases,
    load_segmentor_dataset,
    make_segmentor_plan,
    read_case,
)
from volsynth.evaluation.segtrain import train_segmentor
from volsynth.evaluation.study import evaluate_run
from volsynth.evaluation.study_adherence import measure_adherence
from volsynth.evaluation.study_report import write_outputs
from volsynth.evaluation.study_spec import StudySpec, load_study_spec
from volsynth.evaluation.study_units import (
    GENERATOR,
    RUNS,
    SYNTHETIC_INDEX,
    StudyFolder,
    StudyRecord,
    arm_names,
    balance_count,
    class_id,
    edit_mask,
    generate_pair,
    largest_equivalent_diameter_mm,
    own_adherence_run,
    pair_seed,
    run_name,
    split_ids,
    train_generator,
    write_training_subset,
)
from volsynth.io.formats import read_label, read_volume
from volsynth.io.jsonfile import read_json, write_json
from volsynth.io.volume import LabelMap, Volume
from volsynth.models.checkpoint import sha256_file
from volsynth.parallel import process_pool
from volsynth.pipelines.auto import load_pipeline
from volsynth.pipelines.base import Pipeline

MASK_SET, LARGE_SET, TEXT_SET = "mask", "large", "text"
# the synthetic set an arm trains on: the mask pairs for ratio arms (" xR"), the large-lesion pairs for balance
ARM_SETS = {MASK_SET: lambda arm: " x" in arm, LARGE_SET: lambda arm: arm == "balance"}


class StudyRun:
    """One run (or resume) of a study into its folder."""

    def __init__(self, spec: StudySpec, out: str | Path, progress: bool = True,
                 log: Callable[[str], None] = print, record: str | Path | None = None) -> None:
        self.spec, self.progress = spec, progress
        own = (own_adherence_run(spec),) if spec.text.sizes_mm and not spec.text.segmentor else ()
        self.folder = StudyFolder(out, log, StudyRecord(record, own) if record is not None else None)
        self.dataset = load_segmentor_dataset(spec.dataset)
        self.cases = {c.case_id: c for c in labelled_cases(self.dataset)}
        self.train_ids, self.test_ids = split_ids(list(self.cases), spec.n_real, spec.n_test)
        labels = self.dataset.labels
        self.organ = class_id(labels, spec.synthetic.organ_class, "synthetic.organ_class")
        self.lesion = class_id(labels, spec.synthetic.lesion_class, "synthetic.lesion_class")
        self.large_class = class_id(labels, spec.balance.lesion_class, "balance.lesion_class")
        self._pipeline: Pipeline | None = None
        self.model: Path | None = None  # the trained generator (None when no arm needs one)
        self.synthetic: dict[str, list[str]] = {}
        self._arm_cache: dict = {}  # arm -> (names, pairs) of the arm being trained
        self._test_pairs: list | None = None

    # -- 1-2: split, training data, generator -------------------------------------------------------------------

    def pin(self) -> None:
        """Pin the spec and the split and write the training subset."""
        self.folder.pin_spec(self.spec)
        self.folder.pin_split({"dataset": str(self.dataset.root), "train": self.train_ids, "test": self.test_ids,
                               "label_sha256": {c: sha256_file(self.cases[c].label)
                                                for c in self.train_ids + self.test_ids}})
        self.data = write_training_subset(self.folder, self.dataset, self.train_ids)

    def text_ids(self) -> list[tuple[str, float, int]]:
        """(pair id, stated size, number) of every text-guided volume of the spec."""
        return [(f"{TEXT_SET}-{float(size):g}mm-{k}", float(size), k) for size in self.spec.text.sizes_mm
                for k in range(self.spec.text.per_size)]

    def unmeasured_text_ids(self) -> list[tuple[str, float, int]]:
        """The text-guided volumes (as ``text_ids``) whose stated size is not measured yet."""
        return [t for t in self.text_ids() if not self.folder.path("adherence", f"{t[0]}.json").is_file()]

    def sets_needed(self) -> set[str]:
        """The synthetic sets with a pair still to be used: by a segmentor not scored yet, or (text) by a size
        not measured yet. A set that no unit needs any more is not remade in a new study folder (once
        DIR/synthetic.json holds its ids)."""
        recorded, pending = self.recorded_sets(), {arm for arm, _, _ in self.pending()}
        arms = set(arm_names(self.spec))
        needed = {name for name, used_by in ARM_SETS.items()
                  if any(map(used_by, pending)) or (name not in recorded and any(map(used_by, arms)))}
        return needed | ({TEXT_SET} if self.unmeasured_text_ids() else set())

    def recorded_sets(self) -> dict[str, list[str]]:
        """DIR/synthetic.json: the pair ids of each set once all were made ({} before)."""
        path = self.folder.path(SYNTHETIC_INDEX)
        return read_json(path) if path.is_file() else {}

    def needs_generator(self) -> bool:
        """Whether a synthetic set is still to be used (an arm or the text adherence needs the generator)."""
        return bool(self.sets_needed())

    def generator_trained(self) -> bool:
        """Whether the generator has finished training (its model folder is written)."""
        return self.folder.path(GENERATOR, "model", "meta.json").is_file()

    def train_generator(self) -> None:
        """Train the generator recipe on the training subset when an arm or the text adherence needs it."""
        if self.needs_generator():
            self.model = train_generator(self.folder, self.spec, self.data, self.progress)
        elif self.generator_trained():
            self.model = self.folder.path(GENERATOR, "model")

    @property
    def pipeline(self) -> Pipeline:
        """The trained generator's pipeline (loaded on first use: a finished set needs none)."""
        if self._pipeline is None:
            self._pipeline = load_pipeline(self.model)
        return self._pipeline

    # -- 3: synthetic sets ------------------------------------------------------------------------------------

    def _prompt(self, template: str | None, mask: LabelMap) -> str:
        if not template:
            return ""
        sizes = measure_lesions(mask, [self.lesion]) or [0.0]  # max extent, as phantom reports state sizes
        return template.replace("{diameter}", f"{sizes[0]:.0f}")

    def _mask_pair(self, set_name: str, index: int, mode: str, diameters: list[float], prompt: str | None) -> str:
        pair_id = f"{set_name}-{index:04d}"
        if (self.folder.path("synthetic", set_name, f"{pair_id}.json")).is_file():
            return pair_id
        source = self.train_ids[index % len(self.train_ids)]
        label_path = Path(self.cases[source].label)
        mask = read_label(label_path, labels=self.dataset.labels)
        seed = pair_seed(self.spec.seed, set_name, index)
        edited, facts = edit_mask(mask, mode, diameters, self.organ, self.lesion, np.random.default_rng(seed))
        generate_pair(self.folder, self.pipeline, set_name, pair_id, (source, label_path), edited,
                      self._prompt(prompt, edited), seed, self.spec.generator.sampling,
                      {"edit": {"mode": mode, "inserted": facts}})
        return pair_id

    def make_synthetic(self) -> None:
        """Generate every synthetic pair still needed (existing ones are kept); a set no unit needs any more keeps
        the ids of DIR/synthetic.json. Writes DIR/synthetic.json once every set is made."""
        spec, names, needed, recorded = self.spec, arm_names(self.spec), self.sets_needed(), self.recorded_sets()
        if any(map(ARM_SETS[MASK_SET], names)):
            count = max(spec.synthetic.ratios) * spec.n_real
            self.synthetic[MASK_SET] = [self._mask_pair(MASK_SET, i, spec.synthetic.lesions, spec.synthetic.diameter_mm,
                                                        spec.synthetic.prompt) for i in range(count)] \
                if MASK_SET in needed else recorded[MASK_SET]
        if any(map(ARM_SETS[LARGE_SET], names)):
            self.synthetic[LARGE_SET] = self._large_pairs() if LARGE_SET in needed else recorded[LARGE_SET]
        if spec.text.sizes_mm:
            self.synthetic[TEXT_SET] = [pair_id for pair_id, _, _ in self.text_ids()]  # made by make_text_pairs
        if not self.folder.path(SYNTHETIC_INDEX).is_file():
            write_json(self.folder.path(SYNTHETIC_INDEX), self.synthetic)
            self.folder.finished("synthetic", {"pairs": {k: len(v) for k, v in self.synthetic.items()}})

    def make_text_pairs(self) -> None:
        """The text-guided volumes whose stated size is still to be measured (made right before they are: a study
        that stops in between makes them again from its record rather than keeping them)."""
        spec = self.spec
        for pair_id, size, k in self.unmeasured_text_ids():
            prompt = spec.text.prompt.replace("{diameter}", f"{size:g}")
            generate_pair(self.folder, self.pipeline, TEXT_SET, pair_id, ("", None), None, prompt,
                          pair_seed(spec.seed, pair_id, k), spec.generator.sampling, {"stated_mm": size})

    def is_large(self, label: LabelMap) -> bool:
        """Whether a label map's largest lesion of the balance class reaches the threshold."""
        labels = label.labels or self.dataset.labels
        named = int(labels.get(self.spec.balance.lesion_class, self.large_class))
        return largest_equivalent_diameter_mm(label, named) >= self.spec.balance.min_diameter_mm

    def _large_pairs(self) -> list[str]:
        """Large-lesion pairs (a lesion inserted into a real training mask) until the balance share is reached."""
        spec = self.spec.balance
        large_real = sum(self.is_large(read_label(self.cases[c].label)) for c in self.train_ids)
        needed = balance_count(len(self.train_ids), large_real, spec.share)
        chosen, index = [], 0
        while len(chosen) < needed:
            if index >= 4 * needed + 8:
                raise ConfigError(None, f"could not make {needed} pairs with a {spec.lesion_class} of "
                                  f"{spec.min_diameter_mm:g} mm or more", "raise balance.diameter_mm")
            pair_id = self._mask_pair(LARGE_SET, index, "insert", spec.diameter_mm, self.spec.synthetic.prompt)
            if self.is_large(self._read_pair(LARGE_SET, pair_id)[1]):
                chosen.append(pair_id)
            index += 1
        return chosen

    def _read_pair(self, set_name: str, pair_id: str) -> tuple[Volume, LabelMap]:
        folder = self.folder.path("synthetic", set_name)
        record = read_json(folder / f"{pair_id}.json")
        return read_volume(folder / record["image"]), read_label(folder / record["label"], labels=record["labels"])

    # -- 4: segmentors ----------------------------------------------------------------------------------------

    def arm_pairs(self, arm: str) -> tuple[list[tuple[str, str]], list]:
        """(source names, (image, label) pairs) of an arm's training set."""
        real = [("real", c) for c in self.train_ids]
        if arm == "real":
            names = real
        elif arm == "balance":
            names = real + [(LARGE_SET, p) for p in self.synthetic.get(LARGE_SET, [])]
        else:
            ratio = int(arm.rsplit(" x", 1)[1])
            synthetic = [(MASK_SET, p) for p in self.synthetic[MASK_SET][:ratio * len(self.train_ids)]]
            names = (real if arm.startswith("real+") else []) + synthetic
        pairs = [read_case(self.cases[i]) if s == "real" else self._read_pair(s, i) for s, i in names]
        return names, pairs

    def units(self) -> list[tuple[str, str, int]]:
        """Every (arm, architecture, seed) segmentor of the study, in order."""
        return [(arm, architecture, int(seed)) for arm in arm_names(self.spec)
                for architecture in self.spec.architectures for seed in self.spec.seeds]

    def run_unit(self, arm: str, architecture: str, seed: int, plan: Plan) -> None:
        """Train (or finish training) one segmentor and score it on the test cases; skipped when scored."""
        name = run_name(arm, architecture, seed)
        folder = self.folder.path(RUNS, name)
        scores_path = folder / "scores.json"
        if scores_path.is_file():
            return
        if not (folder / "segmentor" / "meta.json").is_file():
            if arm not in self._arm_cache:
                self._arm_cache = {arm: self.arm_pairs(arm)}  # one arm's volumes held at a time
            names, pairs = self._arm_cache[arm]
            meta = {"study_run": name, "arm": arm, "training_cases": self.train_ids,
                    "training_set": [f"{s}/{i}" for s, i in names]}
            train_segmentor(pairs, plan, folder, self.spec.segmentor_settings(architecture, seed), meta,
                            self.progress)
            self.folder.finished(f"runs/{name}/segmentor", {"training_set": len(names)})
        if self._test_pairs is None:
            self._test_pairs = [read_case(self.cases[c]) for c in self.test_ids]
        scores = evaluate_run(folder / "segmentor", self._test_pairs, self.spec.nsd_tolerance_mm)
        write_json(scores_path, to_json_ready({"test_cases": self.test_ids, **scores}))
        self.folder.finished(f"runs/{name}/scores")

    def pending(self, arm: str | None = None) -> list[tuple[str, str, int]]:
        """The segmentors (of one arm, or all) not scored yet."""
        return [u for u in self.units() if (arm is None or u[0] == arm)
                and not self.folder.path(RUNS, run_name(*u), "scores.json").is_file()]

    def plan(self) -> Plan:
        """The segmentors' plan, fingerprinted on the real training cases."""
        base = SegmentorSettings.from_dict(self.spec.segmentor)
        return make_segmentor_plan(self.dataset, [self.cases[c] for c in self.train_ids], base)

    def jobs(self, units: list, plan: Plan, workers: int) -> list[tuple]:
        """What a worker process needs to train and score each unit."""
        record = self.folder.record.root if self.folder.record is not None else None
        return [(self.spec, self.folder.root, record, self.synthetic, plan, unit, workers) for unit in units]

    @staticmethod
    def worker_pool(workers: int) -> ProcessPoolExecutor:
        """Processes for segmentors (spawned: a forked child of a process that ran torch can hang)."""
        return process_pool(workers, spawn=True)

    def train_and_score(self, workers: int = 1, busy: list | None = None, plan: Plan | None = None) -> None:
        """Every (arm, architecture, seed) segmentor not scored yet, and not ``busy`` elsewhere, trained and
        scored (with ``plan``, else the plan made here); with ``workers`` > 1, that many at a time, each in its
        own process."""
        pending = [u for u in self.pending() if u not in (busy or [])]
        if pending:
            plan = plan or self.plan()
            if workers > 1 and len(pending) > 1:
                with self.worker_pool(min(workers, len(pending))) as pool:
                    for unit in pool.map(_run_unit_in_worker, self.jobs(pending, plan, workers)):
                        self.folder.say(f"scored: {run_name(*unit)}")
            else:
                for unit in pending:
                    self.run_unit(*unit, plan)

    def scored_runs(self) -> list[dict]:
        """Every segmentor's record and test scores, in order."""
        runs = []
        for arm, architecture, seed in self.units():
            name = run_name(arm, architecture, seed)
            folder = self.folder.path(RUNS, name)
            record = read_json(folder / "scores.json")
            runs.append({"name": name, "arm": arm, "architecture": architecture, "seed": seed,
                         "training_set_size": len(read_json(folder / "segmentor" / "meta.json")
                                                  .get("training_set", [])),
                         "scores": {m: record[m] for m in ("dice", "nsd")}})
        return runs

    def adherence_run(self) -> Path:
        """The study's own segmentor that measures text adherence when the spec names none."""
        return self.folder.path(RUNS, own_adherence_run(self.spec), "segmentor")

    def large_test_cases(self) -> list[str]:
        """Test cases whose largest lesion of the balance class reaches the threshold."""
        return [c for c in self.test_ids if self.is_large(read_label(self.cases[c].label))]


def _run_unit_in_worker(job: tuple) -> tuple[str, str, int]:
    """One segmentor of a study in a worker process (its share of the CPU threads); returns its unit."""
    spec, root, record, synthetic, plan, unit, workers = job
    torch.set_num_threads(max(1, torch.get_num_threads() // workers))
    study = StudyRun(spec, root, progress=False, log=lambda message: None, record=record)
    study.synthetic = synthetic
    study.run_unit(*unit, plan)
    return unit


def run_study(spec_path: str | Path, out: str | Path, progress: bool = True, log: Callable[[str], None] = print,
              command: str | None = None, workers: int = 1, record: str | Path | None = None) -> dict:
    """Run (or continue) a study file into ``out``; returns the study.json record. ``workers``: segmentors
    trained at a time (one process each). ``record``: a study record (``StudyRecord``) read back into ``out``
    first and kept up to date as units finish."""
    spec = load_study_spec(spec_path)
    study = StudyRun(spec, out, progress, log, record)
    if study.folder.record is not None:
        study.folder.check_target()
        study.folder.record.check(spec)
        copied = study.folder.record.restore(study.folder)
        if copied:
            log(f"from the record {study.folder.record.root}: {len(copied)} file(s)")
    study.pin()
    if study.folder.record is not None:
        study.folder.record.sync(study.folder)
    # with workers, while the generator trains, the real-only segmentors (they need no synthetic data) train in
    # workers - 1 processes; once the synthetic sets are made, those not started join the others
    early = study.pending("real") if workers > 1 and "real" in arm_names(spec) and study.needs_generator() \
        and not study.generator_trained() else []
    pool, plan = (study.worker_pool(workers - 1), study.plan()) if early else (None, None)
    futures = [pool.submit(_run_unit_in_worker, job) for job in study.jobs(early, plan, workers)] if pool else []
    try:
        study.train_generator()
        study.make_synthetic()
        if spec.text.sizes_mm and spec.text.segmentor and Path(spec.text.segmentor).is_dir():
            study.make_text_pairs()  # measured as soon as they can be: they need no study segmentor
            measure_adherence(study, spec.text.segmentor)
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    busy = []
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
        busy = [unit for unit, future in zip(early, futures, strict=True) if not future.cancelled()
                and not future.done()]
    study.train_and_score(workers, busy, plan)
    for unit, future in zip(early, futures, strict=True):
        if future.cancelled():
            continue
        try:
            future.result()  # waits for a unit still running
        except Exception:  # a failed early unit was retried above; its error stands only if that failed too
            if unit in study.pending():
                raise
    runs = study.scored_runs()
    adherence = None
    if spec.text.sizes_mm:
        study.make_text_pairs()
        adherence = measure_adherence(study, spec.text.segmentor or study.adherence_run())
    data = {"dataset": str(study.dataset.root), "train_cases": study.train_ids, "test_cases": study.test_ids,
            "large_test_cases": study.large_test_cases(), "synthetic": study.synthetic,
            "generator": str(study.model) if study.model is not None else None}
    result = write_outputs(study.folder, spec, runs, data, adherence, command, asdict(spec.synthetic))
    if study.folder.record is not None:
        study.folder.record.keep(study.folder, "outputs")
    return result
