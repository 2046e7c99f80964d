#!/usr/bin/env bash
# The first run: sets everything up, builds the bundled MNIST digits into a data set, trains a
# small Patch Diffusion model, samples a grid of images and scores them with FID.
# On a CPU it trains for about 10 minutes; with a CUDA GPU it trains a larger model for longer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${VIRTUAL_ENV:-}" ]; then PY=.venv/bin/python; else PY=python; fi

DATA=datasets/mnist-32x32.zip
[ -f "$DATA" ] || "$PY" dataset_tool.py convert --source=data/mnist-10k-28x28.npz --dest="$DATA" --resolution=32x32

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    # GPU: a wider network, larger batches, ~10x more images.
    TRAIN=(--cbase=64 --cres=1,2,2 --batch=128 --duration=${DEMO_MIMG:-1.0} --lr=1e-3 --dropout=0 --lr-rampup=20 --tick=20 --snap=25 --dump=50)
    NUM=${DEMO_FID_NUM:-5000}
else
    # CPU: the bench network (2.7M parameters), about 10 minutes on 2 cores.
    TRAIN=(--cbase=32 --cres=1,2,2 --batch=32 --duration=${DEMO_MIMG:-0.02} --lr=2e-3 --dropout=0 --lr-rampup=2 --tick=2 --snap=5 --dump=10)
    NUM=${DEMO_FID_NUM:-256}
fi

"$PY" train.py --outdir=runs --desc=demo --data="$DATA" --seed=0 "${TRAIN[@]}"
RUN=$(ls -d runs/*-demo | sort | tail -n 1)
SNAP=$(ls "$RUN"/network-snapshot-*.pkl | sort | tail -n 1)

"$PY" generate.py --network="$SNAP" --outdir="$RUN/generated" --seeds=0-$((NUM - 1)) --grid="$RUN/grid.png"
REF=datasets/mnist-32x32-ref-$NUM.npz
[ -f "$REF" ] || "$PY" fid.py ref --data="$DATA" --dest="$REF" --num="$NUM"
"$PY" fid.py calc --images="$RUN/generated" --ref="$REF" --num="$NUM" | tee "$RUN/fid.txt"
echo
echo "Run folder:   $RUN"
echo "Sample grid:  $RUN/grid.png (and samples-*.png per snapshot, reals.png, loss.png)"
echo "Score:        $(cat "$RUN/fid.txt") against $NUM training images"
