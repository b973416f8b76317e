#!/usr/bin/env bash
# Does a model draw a lesion inserted into a real mask? The first N (6) label maps of DATA each get one lesion of
# DIAMETER (35) mm (volsynth edit, seed = case index); each MODEL generates a volume from every edited mask (the
# prompt states the size); research/scripts/lesion_contrast.py then prints, per model, the largest lesion's median
# minus the liver's median, beside DATA's own cases.
#   source .venv/bin/activate
#   MODELS="models/abdomen-ct-64 models/abdomen-refined-64" bash research/scripts/inserted_lesions.sh
# Needs data/study-phantoms (volsynth phantom abdomen-ct data/study-phantoms --cases 24 --size 128 --seed 2) and a
# new OUT (runs/inserted-lesions): nothing is overwritten. The masks in jobs.jsonl are relative to its folder.
set -euo pipefail
MODELS=${MODELS:-models/abdomen-ct-64}
DATA=${DATA:-data/study-phantoms}
OUT=${OUT:-runs/inserted-lesions}
N=${N:-6}
DIAMETER=${DIAMETER:-35}
LABELS=${LABELS:-liver=1,portal_vein=2,hepatic_vein=3,tumour=4}
export HF_HUB_OFFLINE=1
if [ -e "$OUT" ]; then echo "error: $OUT exists: give a new OUT" >&2; exit 2; fi
mkdir -p "$OUT/masks"
: > "$OUT/jobs.jsonl"
i=0
for label in $(ls "$DATA"/labelsTr/*.nii.gz | head -n "$N"); do
  volsynth edit "$label" "$OUT/masks/m$i.nii.gz" --insert-lesion "$DIAMETER" --seed "$i" > /dev/null
  echo "{\"prompt\": \"A single $DIAMETER mm hypodense mass in the liver.\", \"seed\": $i, \"id\": \"m$i\", \"mask\": \"masks/m$i.nii.gz\"}" >> "$OUT/jobs.jsonl"
  i=$((i + 1))
done
for model in $MODELS; do
  volsynth generate "$model" --jobs "$OUT/jobs.jsonl" --mask-labels "$LABELS" --out "$OUT/synthetic/$(basename "$model")" \
      --no-progress > /dev/null
done
python research/scripts/lesion_contrast.py "$OUT" --real "$DATA"
