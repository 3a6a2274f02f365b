#!/bin/bash
# TPU pod slice: the same command on every host (JAX reads the hosts from the TPU environment).
#   launch/tpu_pod.sh my-tpu us-central2-b configs/lira_8b.py:stage2 /mnt/shared/runs/lira8b \
#       --set data.root=/data/lira --set data.tokenizer_dir=/models/InternVL2-8B
# (arguments after the workdir go to launch.train)
# Creates nothing: the slice (e.g. `gcloud compute tpus tpu-vm create my-tpu --zone=ZONE
# --accelerator-type=v5p-64 --version=v2-alpha-tpuv5`) and a checkout of this repository at
# ~/lira_jax on every host (with `pip install -r requirements.txt jax[tpu]`) must exist.
# Preemption / maintenance events send SIGTERM: launch.train checkpoints and exits 0; run this
# script again to resume.
set -euo pipefail
TPU=${1:?tpu name}
ZONE=${2:?zone}
CONFIG=${3:?config}
WORKDIR=${4:?workdir (a path every host sees)}
EXTRA=$(printf ' %q' "${@:5}")
gcloud compute tpus tpu-vm ssh "${TPU}" --zone="${ZONE}" --worker=all --command \
  "cd ~/lira_jax && python -m launch.train --config '${CONFIG}' --workdir '${WORKDIR}' \
   --stages ${STAGES:-2}${EXTRA}"
