#!/usr/bin/env bash
# Stage 1 (UVC search) on ImageNet: the seed README's command.
# Override with environment variables, e.g.
#   NPROC=8 GPUS=0,1,2,3,4,5,6,7 DATA_DIR=/data/imagenet OUTPUT_DIR=exp/tiny bash scripts/run_uvc_train.sh
# Extra arguments are appended (later flags win): bash scripts/run_uvc_train.sh --budget 0.6
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-2}
GPUS=${GPUS:-0,1}
MASTER_PORT=${MASTER_PORT:-6019}
MODEL_TYPE=${MODEL_TYPE:-deit_tiny_patch16_224}
MODEL_PATH=${MODEL_PATH:-https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth}
DATA_DIR=${DATA_DIR:-data/imagenet}
OUTPUT_DIR=${OUTPUT_DIR:-mc_deit_tiny_patch16_224_with_patch}
NUM_WORKERS=${NUM_WORKERS:-64}

exec torchrun --nproc_per_node="$NPROC" --master_port "$MASTER_PORT" joint_train.py \
  --gpu_num "$GPUS" \
  --uvc_train \
  --model_type "$MODEL_TYPE" \
  --model_path "$MODEL_PATH" \
  --data_dir "$DATA_DIR" \
  --distillation-type soft \
  --distillation-alpha 0.1 \
  --train_batch_size 512 \
  --num_epochs 30 \
  --eval_every 1000 \
  --flops_with_mhsa 1 \
  --zlr_schedule_list "1,5,9,13,17" \
  --learning_rate 1e-4 \
  --enable_deit 0 \
  --budget 0.5 \
  --enable_pruning 1 \
  --enable_block_gating 1 \
  --enable_patch_gating 1 \
  --gating_weight 5e-4 \
  --patch_weight 5 \
  --patch_l1_weight 0.01 \
  --patchloss "l1" \
  --use_gumbel 1 \
  --glr 0.1 \
  --patchlr 0.01 \
  --num_workers "$NUM_WORKERS" \
  --seed 730 \
  --output_dir "$OUTPUT_DIR" \
  --log_interval 1000 \
  --eps 0.1 \
  --eps_decay 0.92 \
  --enable_warmup 1 \
  --warmup_epochs 5 \
  --warmup_lr 1e-4 \
  --z_grad_clip 0.5 \
  --gating_interval 50 \
  "$@"
