#!/usr/bin/env bash
# Every GPU check in one command, for the lent device machine (one H100), within ~8 minutes:
#   1. the CUDA-graph step equals the eager step (bench/gpu_selfcheck.py);
#   2. the seed reference's images/s on the GPU (workers 0 as written, and 8 workers);
#   3. the full 300-epoch seed recipe with cifar-resnet, evaluation every epoch: wall time,
#      images/s per epoch and final accuracy.
# The device machine gets only the repository, so the data travels packed:
#   python bench/pack_data.py pack ../shared/data/cifar10-jpeg .gpudata/cifar10-jpeg.npz
#   cp ../shared/reference/seed_reference.py .gpudata/
# and the run names .gpudata in `carry`. Logs go to $OUT (or /tmp/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CIFAR_RESNET_CACHE=/tmp/cr-cache
DATA=/tmp/cifar10-jpeg
EPOCHS=${EPOCHS:-300}
log() { echo "== $(date +%T) $*"; }

log "machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
[ -d $DATA ] || python3 bench/pack_data.py unpack .gpudata/cifar10-jpeg.npz $DATA
log "decode + cache"; python3 -c "
import time; t=time.time()
from cifar_resnet.data import load_data; b=load_data('$DATA')
print('decoded', len(b.train.labels), len(b.test.labels), f'in {time.time()-t:.1f}s')"

log "1. graph vs eager"; python3 bench/gpu_selfcheck.py 2>&1 | tee "$OUT/selfcheck.log"

log "2. reference throughput"
for w in 0 8; do
  python3 .gpudata/seed_reference.py --data $DATA --epochs 1 --max-steps 300 --no-eval \
    --workers $w 2>&1 | tail -1 | sed "s/^/reference workers=$w: /" | tee -a "$OUT/reference.log"
done

log "3. full seed recipe: $EPOCHS epochs"
start=$(date +%s%N)
python3 -m cifar_resnet train --data $DATA --out /tmp/run-seed --device cuda \
  --epochs "$EPOCHS" 2>&1 | tee "$OUT/seed-train.log"
end=$(date +%s%N)
echo "seed recipe wall time (process start to exit, data cached): $(( (end - start) / 1000000 )) ms" \
  | tee -a "$OUT/seed-train.log"
cp /tmp/run-seed/metrics.csv /tmp/run-seed/summary.json /tmp/run-seed/run.json "$OUT/" 2>/dev/null
python3 -m cifar_resnet evaluate /tmp/run-seed --data $DATA --device cuda | head -3
log "done"
