"""Recipes: one YAML runs every stage of a model in order, skipping finished stages and resuming an interrupted one.

The pieces live apart: ``recipe_files`` (reading a recipe, ``base:`` inheritance, profiles, ``--set``),
``recipe_schema`` (checking it), ``runner`` (pinning OUT/recipe.yaml, parent recipes, the run), ``stage_graph`` (each
kind's stages in order), ``run_context`` (what the stages share) and ``assemble`` (the model folder and its
model_index.json). This module gathers their public names.
"""

from __future__ import annotations

from volsynth.training.assemble import assemble_model, model_index_for, write_index
from volsynth.training.recipe_files import apply_overrides
from volsynth.training.recipe_schema import KINDS, RECIPE_KEYS, STAGE_SETTINGS, load_recipe, model_ema, model_sampling
from volsynth.training.run_context import initialise_networks, pretrained_model
from volsynth.training.runner import RECIPE_FILE, RESUMABLE_KEYS, pin_recipe, pinned_recipe, recipe_changes, run_recipe

__all__ = ["KINDS", "RECIPE_FILE", "RECIPE_KEYS", "RESUMABLE_KEYS", "STAGE_SETTINGS", "apply_overrides",
           "assemble_model", "initialise_networks", "load_recipe", "model_ema", "model_index_for", "model_sampling",
           "pin_recipe", "pinned_recipe", "pretrained_model", "recipe_changes", "run_recipe", "write_index"]
