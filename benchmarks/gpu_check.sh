#!/usr/bin/env bash
# Readiness check of a machine for volsynth: device, a few training steps, the scaling benchmark, and DDP on
# machines with several GPUs. Run from the repository root:
#   bash benchmarks/gpu_check.sh [--device cpu|cuda]     (default: cuda when nvidia-smi works)
# --device cpu is the reduced mode: fp32 training steps at 16^3 instead of bf16 at 32^3, and scale.py at 64^3
# instead of 256^3.
# Not covered: the test suite has no device switch (every test runs on the CPU), so no test is run on the device;
# the tests check device placement on PyTorch's "meta" device instead. Training (train.device) and generation
# (scale.py) run on the chosen device.
set -euo pipefail

DEVICE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (use --device cpu|cuda)" >&2; exit 2 ;;
  esac
done
if [[ -z "$DEVICE" ]]; then
  if nvidia-smi >/dev/null 2>&1; then DEVICE=cuda; else DEVICE=cpu; fi
fi
if [[ "$DEVICE" != cpu && "$DEVICE" != cuda ]]; then
  echo "error: --device must be cpu or cuda, not $DEVICE" >&2; exit 2
fi

PYTHON="${PYTHON:-.venv/bin/python}"
export HF_HUB_OFFLINE=1
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
STATUS=0

# run a command in a subprocess; print its wall time and peak RSS
measure() {
  "$PYTHON" - "$@" <<'EOF'
import os, subprocess, sys, time
start = time.perf_counter()
process = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(process.pid, 0)
code = os.waitstatus_to_exitcode(status)
print(f"  wall {time.perf_counter() - start:.1f} s, peak RSS {usage.ru_maxrss / 1024**2:.2f} GB, exit {code}")
sys.exit(code)
EOF
}

echo "== device"
if [[ "$DEVICE" == cuda ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  GPUS=$(nvidia-smi -L | wc -l)
else
  grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'
  echo "  $(nproc) CPU cores"
  GPUS=0
fi
"$PYTHON" -c "import torch; print('  torch', torch.__version__, 'cuda available:', torch.cuda.is_available())"

echo "== tests on the device: skipped (the test suite has no device switch)"

echo "== training steps, recipes/tiny.yaml"
if [[ "$DEVICE" == cuda ]]; then
  SETTINGS=(--set autoencoder.train.steps=20 --set diffusion.train.steps=40 --set controlnet.train.steps=20
            --set autoencoder.train.bf16=true --set diffusion.train.bf16=true --set controlnet.train.bf16=true)
  STEPS=80; MODE="bf16, 32^3"
else
  SETTINGS=(--set autoencoder.train.steps=4 --set diffusion.train.steps=8 --set controlnet.train.steps=4
            --set data.phantom.cases=4 --set prepare.size=16)
  STEPS=16; MODE="fp32, 16^3 (reduced)"
fi
for STAGE in autoencoder diffusion controlnet; do SETTINGS+=(--set "$STAGE.train.device=$DEVICE"); done
TRAIN_START=$(date +%s.%N)
measure "$PYTHON" -m volsynth.cli train --recipe recipes/tiny.yaml --out "$WORK/tiny" "${SETTINGS[@]}" \
  >"$WORK/train.log" 2>&1 || { STATUS=1; tail -20 "$WORK/train.log"; }
TRAIN_SECONDS=$("$PYTHON" -c "import time; print(f'{time.time() - $TRAIN_START:.1f}')")
tail -1 "$WORK/train.log"
"$PYTHON" -c "print(f'  $MODE: $STEPS steps in $TRAIN_SECONDS s, {$STEPS / $TRAIN_SECONDS:.2f} it/s (phantoms and prepare included)')"

echo "== scaling benchmark"
if [[ "$DEVICE" == cuda ]]; then SIZES=64,128,256; else SIZES=64; fi
"$PYTHON" benchmarks/scale.py --sizes "$SIZES" --steps 2 --device "$DEVICE" || STATUS=1

if [[ "$GPUS" -gt 1 ]]; then
  echo "== DDP over NCCL, $GPUS GPUs"
  measure "$PYTHON" -m torch.distributed.run --nproc_per_node "$GPUS" -m volsynth.cli train \
    --recipe recipes/tiny.yaml --out "$WORK/ddp" --set autoencoder.train.steps=8 --set diffusion.train.steps=8 \
    --set controlnet.train.steps=8 >"$WORK/ddp.log" 2>&1 || { STATUS=1; tail -20 "$WORK/ddp.log"; }
else
  echo "== DDP: skipped (fewer than 2 GPUs)"
fi

echo "== done in $((SECONDS - START)) s, $([[ $STATUS -eq 0 ]] && echo 'all parts passed' || echo 'some part FAILED')"
exit $STATUS
