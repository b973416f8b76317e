#!/usr/bin/env bash
# Liver Dice (evaluation segmentor vs the conditioning mask) of a ControlNet model over mask guidance x
# ControlNet scale x text guidance x sampling steps, on the first LIMIT (8) held-out masks. Prints one line per
# setting; keeps each report. Each list is a variable: MASK_GUIDANCE (1 2 4), CONTROLNET_SCALE (1 2),
# TEXT_GUIDANCE (3) and STEPS (30).
#   source .venv/bin/activate; MODEL=models/abdomen-ct-64 bash research/scripts/guidance_dice.sh
# A mask-concat model has no ControlNet: CONTROLNET_SCALE=1 MODEL=runs/abdomen-concat-64/model bash research/scripts/guidance_dice.sh
# Needs runs/heldout-abdomen-64 and runs/seg-abdomen-64 (research/README.md, "Set-up").
set -euo pipefail
MODEL=${MODEL:-models/abdomen-ct-64}
HELDOUT=${HELDOUT:-runs/heldout-abdomen-64}
SEGMENTOR=${SEGMENTOR:-runs/seg-abdomen-64}
OUT=${OUT:-runs/guidance-dice}
LIMIT=${LIMIT:-8}
export HF_HUB_OFFLINE=1
for mg in ${MASK_GUIDANCE:-1 2 4}; do
  for cs in ${CONTROLNET_SCALE:-1 2}; do
    for tg in ${TEXT_GUIDANCE:-3}; do
      for steps in ${STEPS:-30}; do
        setting="mask guidance $mg, controlnet scale $cs, text guidance $tg, $steps steps"
        name=$OUT/mg$mg-cs$cs-tg$tg-s$steps
        rm -rf "$name-gen" "$name-report"
        volsynth generate "$MODEL" --masks-from "$HELDOUT" --limit "$LIMIT" --mask-guidance "$mg" --controlnet-scale "$cs" \
            --text-guidance "$tg" --steps "$steps" --out "$name-gen" --no-progress > /dev/null
        volsynth evaluate --real "$HELDOUT" --generated "$name-gen" --segmentor "$SEGMENTOR" --max-real "$LIMIT" \
            --out "$name-report" --no-progress > /dev/null
        python -c "import json; m = json.load(open('$name-report/metrics.json')); d = m['mask_faithfulness']['gen']['dice']; \
f = m['fid']['fid']; print('$setting: liver Dice %.3f, FID a/c/s %.3f / %.3f / %.3f' \
% (d['liver'], f['axial'], f['coronal'], f['sagittal']))"
      done
    done
  done
done
