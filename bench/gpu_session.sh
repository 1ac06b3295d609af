#!/bin/bash
# The GPU half of bench/ in one go, for a short lease on a GPU machine (bench/README.md, "GPU").
#
#   OUT=/tmp/gpu bash bench/gpu_session.sh          # on the GPU machine, from the repository root
#   QUICK=1 OUT=/tmp/gpu bash bench/gpu_session.sh  # a 4-minute rehearsal of every step (any host)
#   STEPS="4 5" OUT=/tmp/gpu bash bench/gpu_session.sh  # only some steps
#
# On an H200 (2026-11-29) the steps took 2.5, 2.5, 1.5, 2 and 2.2 minutes, mostly compilation
# (XLA autotunes every convolution): more than one 10-minute call, so run "1 2 3", then "4 5".
#
# In order of what matters most, each step under its own time limit, every result written to $OUT
# as soon as it exists (a lease that ends early keeps what finished; model_speed prints each row as
# a JSON line to log.txt before its table):
#   1. model_speed, 1x: full train step, batch 8 of 256x256: JAX float32 and bfloat16 against
#      PyTorch float32 and bf16 autocast, same weights; TFLOP/s, MFU against the measured bf16
#      matrix rate, device memory; profiles of two steps of each (profiles.tar.gz).
#   2. mixed_precision: the demo training in float32 and in bfloat16 (loss trajectories, final
#      validation PSNR), through the real input pipeline; then the demo step on synthetic data:
#      if the two step rates agree, the input pipeline is not the bottleneck.
#   3. model_speed, 0.5x: the same train step.
#   4. model_speed, both: forward, batch 1 of 256x256, and one 1280x720 frame through tiles.
#   5. train_step: the library's own train step (L1, clipping, non-finite guard) on the SIDD
#      recipe's batch, 1x, bfloat16 and float32.
# Only when named in STEPS (the 2026-11-30 H200 run, 474c991, ran "6 7 8 9" in one call):
#   6. CUDA graphs: the 0.5x bf16 train step (launch-bound on an H200: bench/README.md) with XLA's
#      command buffers off, as XLA sets them by default, and with every command kind on.
#   7. PyTorch's faster forms on the 1x train step: channels_last (no NCHW<->NHWC transposes around
#      cuDNN), bf16 autocast, torch.compile (inductor) under bf16 autocast, against JAX bf16.
#   8. The input pipeline: the demo step through grain against the same step on synthetic batches.
#   9. CUDA graphs on the 1x bf16 train step: XLA's default against every command kind.
# Packages the machine's image lacks (grain, ml_collections and their needs) travel as wheels in
# .whl/ (bench/README.md says which and how to fetch them).
set -u
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
PY=${PY:-python3}
# This checkout's hinet_jax, installed or not (the lent machine's image has no package index).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c 'import grain, ml_collections' 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ -n "${QUICK:-}" ]; then  # Rehearsal: smallest sizes, every code path.
  BIG=0.5x; SMALL=0.5x; TRAIN_CASE=train_b2_128; REPS=1; DEMO_STEPS=20; SIDD_BATCH=1
  SIDD_CROP=64; SIDD_CONFIG=configs/sidd.py:0.5x
else
  BIG=1x; SMALL=0.5x; TRAIN_CASE=train_b8_256; REPS=20; DEMO_STEPS=800; SIDD_BATCH=8
  SIDD_CROP=256; SIDD_CONFIG=configs/sidd.py
fi
THREADS=$(nproc)
quiet() { grep -v -E '^[WI][0-9]{4} |^WARNING: All log messages'; }
STEPS=${STEPS:-1 2 3 4 5}
step() { echo "=== $(date +%T) $*" | tee -a "$LOG"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
speed() {  # speed SECONDS JSON_NAME model_speed-flags...
  local limit=$1 name=$2
  shift 2
  timeout "$limit" $PY bench/model_speed.py --threads="$THREADS" --noisolate --nomemory \
    --nokeep_freed_memory --reps="$REPS" --json="$OUT/$name" "$@" 2>&1 | quiet | tee -a "$LOG"
}

step environment
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax',
flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__,
torch.cuda.is_available() and torch.cuda.get_device_name())"; } 2>&1 | tee -a "$LOG"

if want 1; then
step "1. train step speed, $BIG ($TRAIN_CASE)"
speed 240 speed_train_big.json --variants=$BIG --cases=$TRAIN_CASE --profile_dir=/tmp/profiles
tar -czf "$OUT/profiles.tar.gz" --exclude='*.xplane.pb' -C /tmp profiles 2>>"$LOG"
fi

if want 2; then
step "2. mixed precision on the demo ($DEMO_STEPS steps); input pipeline vs synthetic"
timeout 180 $PY bench/mixed_precision.py --config=configs/demo.py \
  --config.num_train_steps="$DEMO_STEPS" --json="$OUT/mixed_precision.json" \
  --plot="$OUT/mixed_precision.png" 2>&1 | quiet | tee -a "$LOG"
timeout 60 $PY bench/train_step.py --config=configs/demo.py --steps=$((DEMO_STEPS / 4)) \
  2>&1 | quiet | tee -a "$LOG"
fi

if want 3; then
step "3. train step speed, $SMALL ($TRAIN_CASE)"
speed 150 speed_train_small.json --variants=$SMALL --cases=$TRAIN_CASE
fi

if want 4; then
step "4. forward speed, $BIG and $SMALL (fwd256, tiled720)"
speed 240 speed_forward.json --variants=$BIG,$SMALL --cases=fwd256,tiled720
fi

if want 5; then
step "5. the library's train step, SIDD recipe batch ($SIDD_CONFIG)"
for dtype in bfloat16 float32; do
  timeout 120 $PY bench/train_step.py --config="$SIDD_CONFIG" --config.model.dtype=$dtype \
    --config.batch_size="$SIDD_BATCH" --config.data.crop_size="$SIDD_CROP" --steps=20 \
    --json="$OUT/train_step_$dtype.json" 2>&1 | quiet | tee -a "$LOG"
done
fi

cuda_graphs() {  # cuda_graphs VARIANT SETTING...: the bf16 train step under XLA command buffers.
  local variant=$1 setting flags
  shift
  for setting in "$@"; do
    case $setting in
      off) flags="--xla_gpu_enable_command_buffer=" ;;
      default) flags="" ;;
      all) flags="--xla_gpu_enable_command_buffer=$ALL_COMMANDS --xla_gpu_graph_min_graph_size=1" ;;
    esac
    echo "command buffers $setting: XLA_FLAGS=$flags" | tee -a "$LOG"
    # One autotuning cache for every setting: the same convolution algorithms in each, and
    # the later compiles skip the autotuning.
    XLA_FLAGS="--xla_gpu_per_fusion_autotune_cache_dir=/tmp/xla_autotune $flags" \
      speed 130 "speed_command_buffers_${variant}_$setting.json" --variants="$variant" \
      --cases=$TRAIN_CASE --frameworks=jax_bf16 --ceiling_n=0
  done
}
ALL_COMMANDS=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE

if want 6; then
step "6. XLA command buffers (CUDA graphs) off / XLA's default / every kind, $SMALL ($TRAIN_CASE)"
cuda_graphs $SMALL off default all
fi

if want 7; then
step "7. PyTorch's faster forms, $BIG ($TRAIN_CASE): channels_last, torch.compile, bf16 autocast"
# One process per framework, rows logged as each ends; torch.compile last (longest compile).
timeout 330 $PY bench/model_speed.py --threads="$THREADS" --nomemory --nokeep_freed_memory \
  --reps="$REPS" --json="$OUT/speed_torch_forms.json" --variants=$BIG --cases=$TRAIN_CASE \
  --frameworks=jax_bf16,torch,torch_cl,torch_cl_bf16,torch_compile_bf16 2>&1 | quiet | tee -a "$LOG"
fi

if want 8; then
step "8. input pipeline: the demo step through grain vs on synthetic batches"
# 40 warm-up steps: past the demo source's first epoch (it degrades each photo once, then reuses).
for data in --data --nodata; do
  timeout 75 $PY bench/train_step.py --config=configs/demo.py --steps=$((DEMO_STEPS / 2)) \
    --warmup_steps=40 $data 2>&1 | quiet | tee -a "$LOG"
done
fi

if want 9; then
step "9. XLA command buffers, $BIG ($TRAIN_CASE)"
cuda_graphs $BIG default all
fi
step done
