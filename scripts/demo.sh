#!/usr/bin/env bash
# The first run: sets everything up, builds the bundled MNIST digits into a data set, trains a
# small Patch Diffusion model, samples a grid of images and scores them with FID.
# On a CPU it trains for at most 10 minutes; with a CUDA GPU it trains a larger model for longer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${VIRTUAL_ENV:-}" ]; then PY=.venv/bin/python; else PY=python; fi

DATA=datasets/mnist-32x32.zip
[ -f "$DATA" ] || "$PY" dataset_tool.py convert --source=data/mnist-10k-28x28.npz --dest="$DATA" --resolution=32x32

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    # GPU: a wider network, larger batches, ~10x more images.
    TRAIN=(--cbase=64 --cres=1,2,2 --batch=128 --duration=${DEMO_MIMG:-1.0} --lr=1e-3 --dropout=0 --lr-rampup=20 --tick=20 --snap=25 --dump=50)
    GEN=()
    NUM=${DEMO_FID_NUM:-5000}
else
    # CPU: a small fast class-conditional network (four resolutions down to 4x4, one residual block
    # each, no attention, 1.7M parameters), bf16 where the CPU computes it natively, noise levels
    # centred higher than EDM's (--P_mean=0: whole digits before fine strokes), trained for
    # ${DEMO_MINUTES:-8} minutes at most, sampled with classifier-free guidance (docs/results.md).
    # CPUs without native bf16 (AVX2 only, e.g. AMD EPYC) train and sample ~1.7x slower: 7 minutes
    # there keep the whole command within 15.
    "$PY" -c "import sys; from torch_utils import misc; sys.exit(0 if misc.cpu_has_bf16() else 1)" || DEMO_MINUTES=${DEMO_MINUTES:-7}
    TRAIN=(--cbase=32 --cres=1,2,2,2 --blocks=1 --attn=none --cond=1 --label-dropout=0.1 --batch=32 --duration=${DEMO_MIMG:-0.4}
           --time-limit=${DEMO_MINUTES:-8} --lr=2e-3 --lr-decay=20 --dropout=0 --lr-rampup=2 --loss-norm=mean --P_mean=0 --bf16=1
           --tick=5 --snap=20 --dump=40)
    GEN=(--cfg=${DEMO_CFG:-2.5})
    NUM=${DEMO_FID_NUM:-256}
fi

"$PY" train.py --outdir=runs --desc=demo --data="$DATA" --seed=0 "${TRAIN[@]}"
RUN=$(ls -d runs/*-demo | sort | tail -n 1)
SNAP=$(ls "$RUN"/network-snapshot-*.safetensors | sort | tail -n 1)

"$PY" generate.py --network="$SNAP" --outdir="$RUN/generated" --seeds=0-$((NUM - 1)) --grid="$RUN/grid.png" "${GEN[@]}"
REF=datasets/mnist-32x32-ref-$NUM.npz
[ -f "$REF" ] || "$PY" fid.py ref --data="$DATA" --dest="$REF" --num="$NUM"
"$PY" fid.py calc --images="$RUN/generated" --ref="$REF" --num="$NUM" | tee "$RUN/fid.txt"
"$PY" bench/digit_score.py "$RUN/generated" | tee "$RUN/digit_score.txt"
echo
echo "Run folder:   $RUN"
echo "Sample grid:  $RUN/grid.png (and samples-*.png per snapshot, reals.png, loss.png)"
echo "Score:        $(tail -n 1 "$RUN/fid.txt") against $NUM training images"
echo "              $(tail -n 1 "$RUN/digit_score.txt") (a digit classifier; real digits score about 0.97)"
