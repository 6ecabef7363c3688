#!/usr/bin/env bash
# Stage 2 (fine-tune the found architecture, then export) on ImageNet: the seed README's command.
# Override with environment variables, e.g.
#   CHECKPOINT=mc_deit_small/deit_small_patch16_224_uvc.pth DATA_DIR=/data/imagenet bash scripts/run_post_train.sh
# Extra arguments are appended (later flags win): bash scripts/run_post_train.sh --epochs 60
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-2}
GPUS=${GPUS:-2,3}
MASTER_PORT=${MASTER_PORT:-6382}
MODEL_TYPE=${MODEL_TYPE:-deit_small_patch16_224}
MODEL_PATH=${MODEL_PATH:-https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth}
CHECKPOINT=${CHECKPOINT:-mc_deit_small_patch16_224/deit_small_patch16_224_uvc.pth}
DATA_DIR=${DATA_DIR:-data/imagenet}
OUTPUT_DIR=${OUTPUT_DIR:-exp/deit_small_nasprune_0.58}
NUM_WORKERS=${NUM_WORKERS:-64}

exec torchrun --nproc_per_node="$NPROC" --master_port "$MASTER_PORT" post_train.py \
  --pretrained 0 \
  --model_type "$MODEL_TYPE" \
  --model_path "$MODEL_PATH" \
  --checkpoint_dir "$CHECKPOINT" \
  --data_dir "$DATA_DIR" \
  --distillation-type soft \
  --distillation-alpha 0.1 \
  --train_batch_size 256 \
  --gpu_num "$GPUS" \
  --epochs 120 \
  --eval_every 1000 \
  --output_dir "$OUTPUT_DIR" \
  --num_workers "$NUM_WORKERS" \
  "$@"
