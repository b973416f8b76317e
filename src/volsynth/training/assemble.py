"""Model assembly: the trained stages' networks in one model folder, with meta.json and model_index.json."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from volsynth.io.jsonfile import read_json
from volsynth.models.checkpoint import load_checkpoint, save_checkpoint
from volsynth.models.index import (
    MODEL_INDEX,
    ModelIndex,
    Parent,
    Provenance,
    StageRecord,
    model_components,
    plans_of,
    read_model_index,
    weights_sha256,
    write_model_index,
)
from volsynth.training.recipe_files import display_path
from volsynth.training.recipe_schema import model_ema, model_sampling

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def model_dtype(recipe: dict) -> torch.dtype | None:
    """The dtype the recipe's ``model:`` block stores the weights in."""
    return DTYPES.get(str((recipe.get("model") or {}).get("dtype", "float32")))


def clean_recipe(recipe: dict) -> dict:
    """The recipe without the loader's private keys (``_path``)."""
    return {k: v for k, v in recipe.items() if not k.startswith("_")}


def _sampling_meta(recipe: dict) -> dict:
    sampling = model_sampling(recipe)
    return {"sampling": sampling} if sampling else {}


def _steps(meta: dict, stage: str) -> int:
    """Training steps of a stage: a checkpoint's step, or what a model folder records for the stage."""
    return int(meta["step"]) if "step" in meta else int(meta["steps"][stage])


def assemble_model(autoencoder: Path, diffusion: Path, out: Path, recipe: dict, dtype: torch.dtype | None = None,
                   controlnet: Path | None = None, refiner: Path | None = None,
                   parents: dict[str, Path | Parent] | None = None) -> Path:
    """One latent model folder with the autoencoder, UNet [, ControlNet] [and refiner] (EMA weights unless the
    recipe says ``model: {ema: false}``), what generation needs, and its model_index.json."""
    ema = model_ema(recipe)
    ae = load_checkpoint(autoencoder, use_ema=ema)
    diff = load_checkpoint(diffusion, use_ema=ema)
    meta = {key: diff.meta[key] for key in ("scale_factor", "text_encoder", "latent_shape", "diffusion",
                                            "autoencoder_sha256")}
    meta.update(plan=ae.meta["plan"], dataset_sha256=ae.meta.get("dataset_sha256"), recipe=recipe.get("name"),
                steps={"autoencoder": _steps(ae.meta, "autoencoder"), "diffusion": _steps(diff.meta, "diffusion")},
                **_sampling_meta(recipe))
    # autoencoder.pretrained / diffusion.pretrained: model folders, not training checkpoints
    meta.update({f"{name}_from": str(path) for name, path, checkpoint in
                 (("autoencoder", autoencoder, ae), ("diffusion", diffusion, diff)) if "step" not in checkpoint.meta})
    init = {block: str(recipe[block]["init"]) for block in ("autoencoder", "diffusion", "controlnet", "refiner")
            if isinstance(recipe.get(block), dict) and recipe[block].get("init") is not None}
    if init:  # block: {init: MODEL}: trained on from that model's networks
        meta["initialised_from"] = init
    configs = {"autoencoder": ae.config["networks"]["autoencoder"], "unet": diff.config["networks"]["unet"]}
    networks = {"autoencoder": ae.networks["autoencoder"], "unet": diff.networks["unet"]}
    if controlnet is not None:
        cn = load_checkpoint(controlnet, use_ema=ema)
        configs["controlnet"] = cn.config["networks"]["controlnet"]
        networks["controlnet"] = cn.networks["controlnet"]
        meta["steps"]["controlnet"] = _steps(cn.meta, "controlnet")
        if "step" not in cn.meta:
            meta["controlnet_from"] = str(controlnet)
    if refiner is not None:
        rf = load_checkpoint(refiner, use_ema=ema)
        configs["refiner"] = rf.config["networks"]["refiner"]
        networks["refiner"] = rf.networks["refiner"]
        meta["steps"]["refiner"] = rf.meta["step"]
        meta["refiner"] = rf.meta["refiner"]
    save_checkpoint(out, networks, configs, meta, settings={"recipe": clean_recipe(recipe)}, dtype=dtype)
    write_index(out, recipe, parents)
    return out


def assemble_segguided(checkpoint: Path, out: Path, recipe: dict) -> Path:
    """The segmentation-guided model folder from its one trained stage."""
    trained = load_checkpoint(checkpoint, use_ema=model_ema(recipe))
    meta = {**trained.meta, "recipe": recipe.get("name"), "steps": {"segguided": trained.meta["step"]},
            **_sampling_meta(recipe)}
    save_checkpoint(out, trained.networks, trained.config["networks"], meta,
                    settings={"recipe": clean_recipe(recipe)})
    write_index(out, recipe)
    return out


def assemble_hierarchical(checkpoints: dict[str, Path], out: Path, recipe: dict) -> Path:
    """The hierarchical model folder: the joint stage's and the super-resolution stage's UNets."""
    finals = {name: load_checkpoint(path, use_ema=model_ema(recipe)) for name, path in checkpoints.items()}
    meta = {**finals["joint"].meta, "recipe": recipe.get("name"),  # "diffusion": the joint stage's settings
            "superres_diffusion": finals["superres"].meta["diffusion"],
            "steps": {n: c.meta["step"] for n, c in finals.items()}, **_sampling_meta(recipe)}
    save_checkpoint(out, {n: c.networks["unet"] for n, c in finals.items()},
                    {n: c.config["networks"]["unet"] for n, c in finals.items()}, meta,
                    settings={"recipe": clean_recipe(recipe)})
    write_index(out, recipe)
    return out


def parent_record(folder: Path, stage: str, recipe_file: str | None = None) -> Parent:
    """A parent model of ``stage``: its weights' sha256 and the stage's steps in all (its own parents' included,
    where its model_index.json records them). Named by its recipe file when a parent recipe made it."""
    meta = read_json(folder / "meta.json")
    steps = meta.get("steps", {}).get(stage, meta.get("step"))
    if (folder / MODEL_INDEX).is_file():
        record = read_model_index(folder).provenance.stages.get(stage)
        steps = record.total_steps if record is not None else steps
    return Parent(sha256=weights_sha256(folder), steps=None if steps is None else int(steps),
                  path=None if recipe_file else display_path(folder), recipe=recipe_file)


def data_fingerprint(meta: dict) -> str | None:
    """The sha256 of the training data: the dataset's, or one over each modality's dataset (segguided)."""
    if meta.get("dataset_sha256"):
        return meta["dataset_sha256"]
    plans = meta.get("plans") or ({"": meta["plan"]} if meta.get("plan") else {})
    digests = [f"{name}:{(plan.get('source') or {}).get('sha256')}" for name, plan in sorted(plans.items())]
    if len(digests) == 1:
        return digests[0].split(":", 1)[1]
    return hashlib.sha256(",".join(digests).encode()).hexdigest() if digests else None


def phantom_generators(meta: dict) -> list[dict]:
    """The phantom generators (kind and version) of the model's training data, one per distinct plan source."""
    plans = meta.get("plans") or ({"": meta["plan"]} if meta.get("plan") else {})
    found = [(plan.get("source") or {}).get("phantom_generator") for _, plan in sorted(plans.items())]
    return [g for i, g in enumerate(found) if g and g not in found[:i]]


def model_index_for(model: Path, recipe: dict, parents: dict[str, Path | Parent] | None = None) -> ModelIndex:
    """The model_index.json of an assembled model folder: from its meta.json, config.yaml and weights, the
    resolved recipe, and the models its stages started from (``parents``: stage -> folder or record, for
    ``init: {recipe: R}``; ``init: MODEL`` and reused networks are read from the recipe and meta.json)."""
    meta = read_json(model / "meta.json")
    parents = dict(parents or {})
    stages = {}
    for stage, steps in (meta.get("steps") or {}).items():
        block = recipe.get(stage) if isinstance(recipe.get(stage), dict) else {}
        reused, init = meta.get(f"{stage}_from"), block.get("init")
        parent = parents.get(stage)
        if isinstance(parent, Path):
            parent = parent_record(parent, stage, init.get("recipe") if isinstance(init, dict) else None)
        if parent is None and reused:
            parent = parent_record(Path(reused), stage)
        if parent is None and isinstance(init, (str, dict)):
            source = Path(init if isinstance(init, str) else init.get("path") or "")
            parent = parent_record(source, stage) if (source / "meta.json").is_file() else Parent(
                None, None, recipe=init.get("recipe") if isinstance(init, dict) else None,
                path=init if isinstance(init, str) else None)
        if reused:
            stages[stage] = StageRecord(int(steps), False, int(parent.steps or steps), pretrained=parent)
        elif parent is not None:
            stages[stage] = StageRecord(int(steps), True, int(steps) + int(parent.steps or 0), init=parent)
        else:
            stages[stage] = StageRecord(int(steps), True, int(steps))
    kind = meta.get("kind") if meta.get("kind") in ("segguided", "hierarchical") else "latent"
    source = recipe.get("_source") or recipe.get("_path")
    provenance = Provenance(recipe=display_path(Path(source)) if source else None,
                            resolved_recipe=clean_recipe(recipe), stages=stages,
                            data_fingerprint=data_fingerprint(meta), phantom_generators=phantom_generators(meta))
    return ModelIndex(name=str(recipe.get("name") or meta.get("recipe") or model.name), kind=kind,
                      components=model_components(model), plans=plans_of(meta), sampling=meta.get("sampling") or {},
                      provenance=provenance)


def write_index(model: Path, recipe: dict, parents: dict[str, Path | Parent] | None = None) -> Path:
    """Write the model_index.json of an assembled model folder."""
    return write_model_index(model, model_index_for(model, recipe, parents))
