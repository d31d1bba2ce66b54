#!/usr/bin/env bash
# Multi-node launch with torchrun (run the same command on every node).
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 bash torchrun_multinode.sh configs/pretrain_2b.yaml
# One node: torchrun --standalone --nproc-per-node 8 -m mugv_dit.cli train CONFIG.yaml
set -euo pipefail
CONFIG=${1:?config yaml}; shift
export CUDA_DEVICE_MAX_CONNECTIONS=1
torchrun \
  --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}" --nproc-per-node "${GPUS_PER_NODE:-8}" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
  -m mugv_dit.cli train "$CONFIG" "$@"
