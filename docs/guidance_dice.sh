#!/usr/bin/env bash
# Liver Dice (evaluation segmentor vs the conditioning mask) of a ControlNet model over mask guidance x
# ControlNet scale, on the first LIMIT (8) held-out masks. Prints one line per pair; keeps each report.
#   source .venv/bin/activate; MODEL=models/abdomen-ct-64 bash docs/guidance_dice.sh
# A mask-concat model has no ControlNet: CONTROLNET_SCALE=1 MODEL=runs/abdomen-concat-64/model bash docs/guidance_dice.sh
# Needs runs/heldout-abdomen-64 and runs/seg-abdomen-64 (README "Quality of the shipped models").
set -euo pipefail
MODEL=${MODEL:-models/abdomen-ct-64}
HELDOUT=${HELDOUT:-runs/heldout-abdomen-64}
SEGMENTOR=${SEGMENTOR:-runs/seg-abdomen-64}
OUT=${OUT:-runs/guidance-dice}
LIMIT=${LIMIT:-8}
export HF_HUB_OFFLINE=1
for mg in ${MASK_GUIDANCE:-1 2 4}; do
  for cs in ${CONTROLNET_SCALE:-1 2}; do
    name=$OUT/mg$mg-cs$cs
    rm -rf "$name-gen" "$name-report"
    volsynth generate "$MODEL" --masks-from "$HELDOUT" --limit "$LIMIT" --mask-guidance "$mg" --controlnet-scale "$cs" \
        --out "$name-gen" --no-progress > /dev/null
    volsynth evaluate --real "$HELDOUT" --generated "$name-gen" --segmentor "$SEGMENTOR" --max-real "$LIMIT" \
        --out "$name-report" --no-progress > /dev/null
    python -c "import json; m = json.load(open('$name-report/metrics.json')); d = m['mask_faithfulness']['gen']['dice']; \
f = m['fid']['fid']; print('mask guidance $mg, controlnet scale $cs: liver Dice %.3f, FID a/c/s %.3f / %.3f / %.3f' \
% (d['liver'], f['axial'], f['coronal'], f['sagittal']))"
  done
done
