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

# Sampling: DPM-Solver++(2M) in 15 network calls per image, which matched EDM's Heun sampler at 35
# on the demo network (docs/sampling.md).
SOLVER=(--solver=dpmpp-2m --steps=15)

# Training: the demo-cpu and demo-gpu presets (training/presets.py); DEMO_MINUTES and DEMO_MIMG
# override their time limit and duration.
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    # GPU: a wider network, larger batches and more images (the demo-gpu preset).
    PRESET=demo-gpu
    GEN=()
    NUM=${DEMO_FID_NUM:-5000}
else
    # CPU: a small fast class-conditional network, bf16 where the CPU computes it natively,
    # trained for 8 minutes at most, sampled with classifier-free guidance (docs/results.md).
    # CPUs without native bf16 (AVX2 only, e.g. AMD EPYC) train and sample slower: 7 minutes
    # there keep the whole command within 15.
    PRESET=demo-cpu
    "$PY" -c "import sys; from torch_utils import misc; sys.exit(0 if misc.cpu_has_bf16() else 1)" || DEMO_MINUTES=${DEMO_MINUTES:-7}
    GEN=(--cfg=${DEMO_CFG:-2.5})
    NUM=${DEMO_FID_NUM:-256}
fi
TRAIN=(--preset=$PRESET ${DEMO_MINUTES:+--time-limit=$DEMO_MINUTES} ${DEMO_MIMG:+--duration=$DEMO_MIMG})

"$PY" train.py --outdir=runs --desc=demo --data="$DATA" --seed=0 "${TRAIN[@]}"
RUN=$(ls -d runs/*-demo | sort | tail -n 1)
SNAP=$(ls "$RUN"/network-snapshot-*.safetensors | sort | tail -n 1)

"$PY" generate.py --network="$SNAP" --outdir="$RUN/generated" --seeds=0-$((NUM - 1)) --grid="$RUN/grid.png" "${SOLVER[@]}" "${GEN[@]}"
REF=datasets/mnist-32x32-ref-$NUM.npz
[ -f "$REF" ] || "$PY" fid.py ref --data="$DATA" --dest="$REF" --num="$NUM"
"$PY" fid.py calc --images="$RUN/generated" --ref="$REF" --num="$NUM" | tee "$RUN/fid.txt"
"$PY" bench/digit_score.py "$RUN/generated" | tee "$RUN/digit_score.txt"
echo
echo "Run folder:   $RUN"
echo "Sample grid:  $RUN/grid.png (and samples-*.png per snapshot, reals.png, loss.png)"
echo "Score:        $(tail -n 1 "$RUN/fid.txt") against $NUM training images"
echo "              $(tail -n 1 "$RUN/digit_score.txt") (a digit classifier; real digits score about 0.97)"
