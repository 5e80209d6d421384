#!/usr/bin/env bash
# The main job on the default data: set-up (scripts/install.sh), then a short training run of
# ResNet-20 with 2-bit variance-optimal ZipML weights on Fashion-MNIST (Debian's
# dataset-fashion-mnist, installed by the set-up). About 10 minutes on 2 cores; the run's metrics,
# checkpoint and curves land in runs/quickstart/. Extra arguments go to the trainer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec python3 -m torch_zipml.train --model resnet20 --dataset fashion-mnist \
  --scheme zipml --weight-bits 2 --levels optimal \
  --train-subset 10000 --epochs 2 --seed 0 --out runs/quickstart "$@"
