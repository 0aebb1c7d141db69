#!/bin/sh
# The trainer container's entrypoint: sh deploy/train.sh [trainer flags, --ckpt=DIR among them]
#
# torchrun starts NAVIT_GPUS ranks (default: one per GPU the container sees, or one on a
# machine without GPUs, which runs without torchrun); each rank reads RANK and WORLD_SIZE
# from torchrun and asks the packer for its share of every epoch. Several GPU hosts form one job with NAVIT_NNODES,
# NAVIT_NODE_RANK and NAVIT_RDZV_ENDPOINT (host:port of node 0): see deploy/README.md.
#
# A restarted container (restart: on-failure) finds checkpoint.pt in its --ckpt folder
# and adds --resume, so training continues from the checkpoint's data cursor.
set -eu
ckpt=/ckpt
for arg in "$@"; do
  case "$arg" in
    --ckpt=*) ckpt="${arg#--ckpt=}" ;;
  esac
done
if [ -f "$ckpt/checkpoint.pt" ]; then
  set -- "$@" --resume
fi
nodes="${NAVIT_NNODES:-1}"
if [ "$nodes" -gt 1 ]; then
  rendezvous="--nnodes=$nodes --node-rank=${NAVIT_NODE_RANK:?set NAVIT_NODE_RANK} --rdzv-backend=c10d --rdzv-endpoint=${NAVIT_RDZV_ENDPOINT:?set NAVIT_RDZV_ENDPOINT} --rdzv-id=navit"
else
  rendezvous="--standalone"
fi
# NAVIT_LOCAL_ADDR: the address the ranks reach this node's rendezvous at, where the host
# name does not resolve (a container on the host's network: deploy/compose.host.yml).
rendezvous="$rendezvous${NAVIT_LOCAL_ADDR:+ --local-addr=$NAVIT_LOCAL_ADDR}"
gpus="${NAVIT_GPUS:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
# shellcheck disable=SC2086 # $rendezvous is a list of flags
if [ "$nodes" -eq 1 ] && [ "$gpus" -eq 1 ]; then
  # One rank needs no rendezvous (whose store would listen on every interface).
  exec python -m deploy.cli.train "$@"
fi
exec torchrun $rendezvous --nproc-per-node="$gpus" -m deploy.cli.train "$@"
