#!/usr/bin/env bash
# On a machine with GPUs: the nn job on every GPU (NCCL from two up) and the exact job, checked against one CPU
# process, with rows per second. Fails at once where torch sees no GPU. Options: --rows N --epochs E --batch-size B.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m bench.gpu_check "$@"
