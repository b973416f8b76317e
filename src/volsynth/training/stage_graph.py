"""The stages of each recipe kind, in order: data -> prepare -> trained stages -> model assembly.

Each step reads what earlier steps left in ``run.state`` / ``run.trained`` and skips itself when its output is
already there, so a run resumes where it stopped. ``STAGE_GRAPH[kind]`` is the whole recipe of that kind.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from volsynth.errors import ConfigError
from volsynth.io.jsonfile import read_json
from volsynth.models.checkpoint import load_checkpoint
from volsynth.models.stages import RefinerSettings
from volsynth.training.assemble import assemble_hierarchical, assemble_model, assemble_segguided, model_dtype
from volsynth.training.autoencoder import AutoencoderSettings, AutoencoderStage
from volsynth.training.controlnet import ControlNetSettings, ControlNetStage
from volsynth.training.data import load_prepared
from volsynth.training.diffusion import DiffusionSettings, DiffusionStage
from volsynth.training.hierarchical import HierarchicalSettings, JointStage, SuperResolutionStage
from volsynth.training.latents import CACHE_INFO, build_latent_cache, load_latent_cache
from volsynth.training.recipe_schema import split_block, stage_settings
from volsynth.training.refiner import RefinerStage
from volsynth.training.run_context import (
    Run,
    data_stage,
    init_source,
    model_current,
    prepare_stage,
    pretrained_model,
    train_stage,
)
from volsynth.training.segguided import SegGuidedSettings, SegGuidedStage


def data_and_prepare(run: Run) -> None:
    """1. phantoms (or the given dataset) 2. prepare them on the recipe's grid."""
    dataset = data_stage(run, run.recipe["data"], run.out / "data")
    prepare_stage(run, dataset, run.out / "prepared")
    run.state["data"] = load_prepared(run.out / "prepared")


def datasets_per_modality(run: Run) -> None:
    """Segmentation-guided: one dataset per modality, each prepared."""
    data_cfg = run.recipe["data"]
    key = "phantom" if data_cfg.get("phantom") else "dataset"
    sources = data_cfg[key] if isinstance(data_cfg[key], list) else [data_cfg[key]]
    datasets = []
    for index, source in enumerate(sources):
        dataset = data_stage(run, {key: source}, run.out / f"data-{index}")
        prepare_stage(run, dataset, run.out / f"prepared-{index}")
        datasets.append(load_prepared(run.out / f"prepared-{index}"))
    run.state["datasets"] = datasets


def _same_text_encoder(run: Run, path: Path, where: str) -> None:
    """Refuse a UNet trained with another text encoder (same width or not, its tokens mean other things)."""
    trained_with = read_json(path / "meta.json").get("text_encoder")
    if trained_with != run.text_encoder:
        raise ConfigError(run.path, f"{where}: {path} was trained with text encoder '{trained_with}', the recipe "
                          f"names '{run.text_encoder}'", f"set text_encoder: {trained_with}")


def _reused_diffusion(run: Run) -> Path | None:
    """The model folder named by ``diffusion: {pretrained: MODEL}`` (checked), or None. Its UNet is reused as it
    is, so nothing else may configure the diffusion stage; its autoencoder and text encoder come with it."""
    ae_block, ae_train = split_block(run.recipe.get("autoencoder"))
    diff_block, diff_train = split_block(run.recipe.get("diffusion"))
    if diff_block.get("pretrained") is None:
        return None
    path = pretrained_model(diff_block["pretrained"], None, run.path, "unet", "diffusion")
    if set(diff_block) - {"pretrained"} or diff_train:
        raise ConfigError(run.path, "diffusion.pretrained reuses that model's UNet as it is, so the diffusion block "
                          f"can hold nothing else (found {sorted(set(diff_block) - {'pretrained'})}"
                          f"{' and train' if diff_train else ''})", "drop the other diffusion settings")
    if ae_train or set(ae_block) - {"pretrained"} or ae_block.get("pretrained") not in (None, diff_block["pretrained"]):
        raise ConfigError(run.path, "diffusion.pretrained brings its model's autoencoder; the recipe's autoencoder "
                          "block asks for another", "drop the autoencoder block")
    _same_text_encoder(run, path, "diffusion.pretrained")
    return path


def autoencoder(run: Run) -> None:
    """3. the autoencoder: trained here, or another model's (``pretrained``, which diffusion.pretrained implies)."""
    data = run.state["data"]
    reused = _reused_diffusion(run)
    run.state["reused_diffusion"] = reused
    block, train = stage_settings(run.recipe, "autoencoder")
    pretrained = reused or split_block(run.recipe.get("autoencoder"))[0].get("pretrained")
    if pretrained is not None:
        run.trained["autoencoder"] = pretrained_model(pretrained, data.plan, run.path, "autoencoder")
        return
    init = init_source(run, "autoencoder", data.plan)
    run.trained["autoencoder"] = train_stage(
        run, "autoencoder", train, init,
        lambda: AutoencoderStage(data, AutoencoderSettings.from_dict(block), seed=run.seed))


def latents(run: Run) -> None:
    """4. the latent cache (scaled as the reused diffusion model's were)."""
    folder = run.out / "latents"
    reused = run.state["reused_diffusion"]
    scale = None if reused is None else float(read_json(reused / "meta.json")["scale_factor"])
    run.once(lambda: (folder / CACHE_INFO).is_file(),
             lambda: (run.log("stage latents"),
                      build_latent_cache(run.trained["autoencoder"], run.state["data"], run.text_encoder, folder,
                                         run.progress, scale_factor=scale)))
    run.state["cache"] = load_latent_cache(folder)


def diffusion(run: Run) -> None:
    """5. the text-conditioned diffusion UNet (or a model's, reused as it is)."""
    if run.state["reused_diffusion"] is not None:
        run.trained["diffusion"] = run.state["reused_diffusion"]
        return
    block, train = stage_settings(run.recipe, "diffusion")
    init = init_source(run, "diffusion")
    if init is not None:
        _same_text_encoder(run, init, "diffusion.init")
    run.trained["diffusion"] = train_stage(
        run, "diffusion", train, init,
        lambda: DiffusionStage(run.state["cache"], DiffusionSettings.from_dict({"text_encoder": run.text_encoder,
                                                                                **block}),
                               seed=run.seed, autoencoder=run.trained["autoencoder"]))


def controlnet(run: Run) -> None:
    """6. the ControlNet, when the recipe has one (trained, or reused with its UNet)."""
    if run.recipe.get("controlnet") is None:
        return
    pretrained = split_block(run.recipe["controlnet"])[0].get("pretrained")
    if pretrained is not None:  # checked with the recipe (check_reused_controlnet)
        run.trained["controlnet"] = pretrained_model(pretrained, None, run.path, "controlnet", "controlnet")
        return
    block, train = stage_settings(run.recipe, "controlnet")
    init = init_source(run, "controlnet")
    run.trained["controlnet"] = train_stage(
        run, "controlnet", train, init,
        lambda: ControlNetStage(run.state["cache"], run.trained["diffusion"], ControlNetSettings.from_dict(block),
                                seed=run.seed))


def refiner(run: Run) -> None:
    """7. the refiner, when the recipe has one: pixel space, on the prepared images and label maps."""
    if run.recipe.get("refiner") is None:
        return
    data = run.state["data"]
    block, train = stage_settings(run.recipe, "refiner")
    init = init_source(run, "refiner", data.plan)
    run.trained["refiner"] = train_stage(
        run, "refiner", train, init, lambda: RefinerStage(data, RefinerSettings.from_dict(block), seed=run.seed))


def latent_model(run: Run) -> None:
    """8. the latent model folder."""
    model, trained = run.out / "model", run.trained
    run.once(lambda: model_current(model, trained, run.log),
             lambda: (run.log("stage model"),
                      assemble_model(trained["autoencoder"], trained["diffusion"], model, run.recipe,
                                     model_dtype(run.recipe), trained.get("controlnet"), trained.get("refiner"),
                                     parents=run.parent_models)))


def segguided(run: Run) -> None:
    """The segmentation-guided stage: the mask concatenated to the noisy image, one model for every modality."""
    block, train = stage_settings(run.recipe, "segguided")
    settings = SegGuidedSettings.from_dict({"text_encoder": run.text_encoder, **block})
    run.trained["segguided"] = train_stage(run, "segguided", train, None,
                                           lambda: SegGuidedStage(run.state["datasets"], settings, seed=run.seed))


def segguided_model(run: Run) -> None:
    """The segmentation-guided model folder."""
    model = run.out / "model"
    run.once(lambda: model_current(model, run.trained, run.log),
             lambda: (run.log("stage model"), assemble_segguided(run.trained["segguided"], model, run.recipe)))


def hierarchical_stage(name: str, stage_class: type, run: Run) -> None:
    """The joint (image + labels at low resolution) or the super-resolution stage."""
    block, train = stage_settings(run.recipe, name)
    settings = HierarchicalSettings.from_dict({"text_encoder": run.text_encoder, **block})
    run.trained[name] = train_stage(run, name, train, None,
                                    partial(stage_class, run.state["data"], settings, seed=run.seed))


def hierarchical_model(run: Run) -> None:
    """The hierarchical model folder (both stages must share the factor)."""
    factors = {name: load_checkpoint(run.trained[name]).meta["factor"] for name in ("joint", "superres")}
    if factors["joint"] != factors["superres"]:
        raise ConfigError(run.path, "joint and superres need the same factor")
    model = out = run.out / "model"
    run.once(lambda: model_current(model, run.trained, run.log),
             lambda: (run.log("stage model"), assemble_hierarchical(dict(run.trained), out, run.recipe)))


STAGE_GRAPH = {
    "latent": (data_and_prepare, autoencoder, latents, diffusion, controlnet, refiner, latent_model),
    "segguided": (datasets_per_modality, segguided, segguided_model),
    "hierarchical": (data_and_prepare, partial(hierarchical_stage, "joint", JointStage),
                     partial(hierarchical_stage, "superres", SuperResolutionStage), hierarchical_model),
}
