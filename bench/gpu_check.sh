#!/usr/bin/env bash
# Every GPU check in one command, for the lent device machine (one H100), within ~8 minutes:
#   selfcheck  the CUDA-graph step equals the eager step (bench/gpu_selfcheck.py)
#   reference  the seed reference's images/s on the GPU (workers 0 as written, and 8)
#   variants   ms/step of the training step per precision/layout/compile/graph, top kernels
#   accuracy   no accuracy lost for speed: 15 epochs (StepLR step 5), fp32 vs bf16, 2 seeds
#   seed       the full 300-epoch seed recipe, evaluation every epoch: wall time, accuracy
#   fast       the fast preset (issue 7), 3 seeds: test accuracy, training and process seconds,
#              first epoch (cudnn autotuning + CUDA-graph capture) apart from the rest
#   tune       bench/tune_fast.py on a 5,000-image validation split (cpu- and gpu-scale, 2 seeds),
#              then the best gpu-scale trial whose training fits 9 s, on test, 3 seeds
#   record     the record holders side by side (bench/record_holders.py): airbench94,
#              airbench94_muon and the fast preset, RECORD_RUNS (5) warm runs each and one
#              whole command each; table in record.log, JSON in record.json (~5 minutes)
# STAGES="variants accuracy" bash bench/gpu_check.sh runs a subset; EXTRA adds train flags;
# RECORD_FLAGS adds record_holders.py flags (e.g. --muon-compile max-autotune).
# The device machine gets only the repository, so the data travels packed:
#   python bench/pack_data.py pack ../shared/data/cifar10-jpeg .gpudata/cifar10-jpeg.npz
#   cp ../shared/reference/seed_reference.py .gpudata/
# (pack also copies ../shared/peers/airbench's two files into .gpudata/airbench/, ignored)
# and the run names .gpudata in `carry`. Logs go to $OUT (or /tmp/gpu-check). Run folders under
# /tmp are replaced (--overwrite): a second call on a still-warm machine starts them afresh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CIFAR_RESNET_CACHE=/tmp/cr-cache
DATA=${GPU_CHECK_DATA:-/tmp/cifar10-jpeg}  # another image folder: only a CPU dry run
STAGES=${STAGES:-selfcheck reference variants accuracy seed fast}
EXTRA=${EXTRA:-}
log() { echo "== $(date +%T) $*"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }

log "machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
[ -d $DATA ] || python3 bench/pack_data.py unpack .gpudata/cifar10-jpeg.npz $DATA
log "decode + cache"; python3 -c "
import time; t=time.time()
from cifar_resnet.data import load_data; b=load_data('$DATA')
print('decoded', len(b.train.labels), len(b.test.labels), f'in {time.time()-t:.1f}s')"

if has selfcheck; then
  log "graph vs eager"; python3 bench/gpu_selfcheck.py 2>&1 | tee "$OUT/selfcheck.log"
fi
if has reference; then
  log "reference throughput"
  for w in 0 8; do
    python3 .gpudata/seed_reference.py --data $DATA --epochs 1 --max-steps 300 --no-eval \
      --workers $w 2>&1 | tail -1 | sed "s/^/reference workers=$w: /" | tee -a "$OUT/reference.log"
  done
fi
if has variants; then
  log "step variants"; python3 bench/gpu_variants.py 2>&1 | tee "$OUT/variants.log"
fi
if has accuracy; then
  log "accuracy: fp32 vs bf16, 15 epochs, StepLR step 5, 2 seeds"
  for p in fp32 bf16; do for s in 0 1; do
    python3 -m cifar_resnet train --data $DATA --out /tmp/acc-$p-$s --overwrite --device cuda \
      --epochs 15 --lr-step 5 --precision $p --seed $s --quiet $EXTRA | tail -1 \
      | python3 -c "import json,sys; d=json.load(sys.stdin); print('$p seed $s:', d['test_accuracy'], 'train s', round(d['train_seconds'],1))" \
      | tee -a "$OUT/accuracy.log"
  done; done
fi
# With ONLY_IF_FASTER=X the full run happens only if the best step variant beat the default
# by X times (a short second device session cannot afford the default's 4 minutes again).
if has seed && [ -n "${ONLY_IF_FASTER:-}" ] && \
   ! python3 -c "import sys; sys.exit(float(open('/tmp/best_speedup').read()) < $ONLY_IF_FASTER)"; then
  log "full seed recipe skipped: no variant ${ONLY_IF_FASTER}x faster than the default"
  STAGES=${STAGES/seed/}
fi
if has seed; then
  [ -f /tmp/best_flags ] && EXTRA="$EXTRA $(cat /tmp/best_flags)"
  log "full seed recipe $EXTRA"
  start=$(date +%s%N)
  python3 -m cifar_resnet train --data $DATA --out /tmp/run-seed --overwrite --device cuda \
    $EXTRA 2>&1 \
    | tee "$OUT/seed-train.log" | awk 'NR<=3 || /^\[(50|100|150|200|250|300)\]/ || !/^\[/'
  end=$(date +%s%N)
  echo "seed recipe wall time (process start to exit, data cached): $(( (end - start) / 1000000 )) ms" \
    | tee -a "$OUT/seed-train.log"
  cp /tmp/run-seed/metrics.csv /tmp/run-seed/summary.json /tmp/run-seed/run.json "$OUT/" 2>/dev/null
fi
if has fast; then
  log "fast preset, 3 seeds"
  for s in 0 1 2; do
    start=$(date +%s%N)
    python3 -m cifar_resnet train --preset fast --data $DATA --out /tmp/fast-$s --overwrite \
      --device cuda --seed $s --quiet --no-report $EXTRA > /tmp/fast-$s.json
    end=$(date +%s%N)
    python3 - /tmp/fast-$s <<PY | tee -a "$OUT/fast.log"
import csv, json, statistics, sys
d = json.load(open("/tmp/fast-$s.json"))
rows = list(csv.DictReader(open(sys.argv[1] + "/metrics.csv")))
first = float(rows[0]["epoch_seconds"]); rest = [float(r["epoch_seconds"]) for r in rows[1:]]
print(f"fast seed $s: test {d['test_accuracy']:.2f}% | training {d['train_seconds']:.2f}s "
      f"(first epoch {first:.2f}s incl. autotune + graph capture, others {statistics.median(rest):.3f}s) "
      f"| fit {d['seconds']:.2f}s | process $(( (end - start) / 1000000 )) ms")
PY
  done
fi
if has tune; then
  log "tune on a validation split"
  python3 bench/tune_fast.py --data $DATA --device cuda --stage cpu-scale --seeds 0 1 2>&1 \
    | tee -a "$OUT/tune.log"
  python3 bench/tune_fast.py --data $DATA --device cuda --stage gpu-scale --seeds 0 1 \
    --test-best 3 --max-seconds 9 2>&1 | tee -a "$OUT/tune.log"
fi
if has record; then
  log "record holders side by side: airbench94, airbench94_muon, fast preset"
  python3 bench/record_holders.py --data $DATA --peers .gpudata/airbench --work /tmp/record-holders \
    --runs "${RECORD_RUNS:-5}" --out "$OUT/record.json" ${RECORD_FLAGS:-} 2>&1 | tee "$OUT/record.log"
  cp /tmp/record-holders/airbench94*.log "$OUT/" 2>/dev/null
fi
log "done"
