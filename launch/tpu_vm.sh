#!/usr/bin/env bash
# Runs one mmjax command on every worker of a Cloud TPU VM slice: create the slice (unless it
# exists), copy this checkout, install it with the tpu extra, run the command on --worker=all with
# each worker's output streamed here (prefixed by gcloud with its worker id), then delete the slice.
# Multi-host start-up needs nothing else: `mmjax train` calls jax.distributed.initialize(), which
# finds the coordinator from the TPU metadata (mmjax/distributed.py).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/tpu_vm.sh --name NAME --zone ZONE --type ACCELERATOR [options] -- COMMAND...

Create a TPU VM slice, install this checkout on every worker, run COMMAND on all workers,
stream their logs, delete the slice.

  --name NAME         TPU VM name (created if it does not exist)
  --zone ZONE         e.g. us-east5-a
  --type TYPE         accelerator type, e.g. v5p-64, v5litepod-256, v6e-64, v4-32
  --version VERSION   TPU software version (default: by generation: v2-alpha-tpuv5 for v5p,
                      v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv6e for v6e, tpu-ubuntu2204-base for v4)
  --project PROJECT   Google Cloud project (default: gcloud's configured one)
  --spot              create a Spot slice
  --keep              do not delete the slice at the end (reuse it with the same --name)
  --dry-run           print the gcloud commands instead of running them
  -h, --help          this help

Example (LLaVA-1.5-7B stage 2 on v5p-64, data and checkpoints on GCS):
  launch/tpu_vm.sh --name llava --zone us-east5-a --type v5p-64 -- \
    mmjax train --config configs/llava/llava15_7b_stage2.py --workdir gs://BUCKET/run2 \
      --config.train.init_from=gs://BUCKET/run1/model --config.data.tokenizer=gs://BUCKET/llm/hf_extras

Check that a config fits the slice first, on any CPU machine:
  mmjax aot --config configs/llava/llava15_7b_stage2.py --topology v5p-64
USAGE
}

name="" zone="" type="" version="" project="" spot=0 keep=0 dry=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) name=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --type) type=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --keep) keep=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z $name || -z $zone || -z $type || $# -eq 0 ]]; then usage >&2; exit 2; fi
if [[ -z $version ]]; then
  case $type in
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
    v6e-*) version=v2-alpha-tpuv6e ;;
    v4-*) version=tpu-ubuntu2204-base ;;
    *) echo "no default --version for $type; pass one" >&2; exit 2 ;;
  esac
fi

run() { if [[ $dry -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }
tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
[[ -n $project ]] && where+=(--project "$project")
command=$(printf '%q ' "$@")
repo=$(cd "$(dirname "$0")/.." && pwd)

if [[ $dry -eq 1 ]] || ! "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type "$type" --version "$version")
  [[ $spot -eq 1 ]] && create+=(--spot)
  run "${create[@]}"
fi
cleanup() { [[ $keep -eq 1 ]] || run "${tpu[@]}" delete "$name" "${where[@]}" --quiet; }
trap cleanup EXIT

# Ship the checkout (without git history or build outputs) and install it on every worker.
archive=$(mktemp --suffix=.tar.gz)
tar -C "$repo" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ -czf "$archive" .
run "${tpu[@]}" scp "$archive" "$name:~/mmjax.tar.gz" "${where[@]}" --worker=all
rm -f "$archive"
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command \
  "mkdir -p ~/mmjax && tar -C ~/mmjax -xzf ~/mmjax.tar.gz && pip install -q -e \"\$HOME/mmjax[tpu]\""
# Every worker runs the same command; gcloud streams each worker's output here.
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "cd ~/mmjax && $command"
