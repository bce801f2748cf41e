#!/usr/bin/env bash
# Runs one mmjax command as a GKE workload on TPU slices through xpk (pip install xpk): xpk builds
# an image from this checkout on top of a base image, submits a JobSet with one pod per TPU host
# (and --slices slices joined over DCN), and we follow the workload until it ends. Multi-host
# start-up needs nothing else: `mmjax train` calls jax.distributed.initialize(), which reads the
# coordinator and worker ids xpk puts in the pods' environment (mmjax/distributed.py).
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/xpk.sh --cluster CLUSTER --type TPU_TYPE [options] -- COMMAND...

Submit COMMAND as an xpk workload on an existing GKE TPU cluster (xpk cluster create ...),
with this checkout installed (tpu extra) in the image, then wait for it and show its status.

  --cluster CLUSTER   GKE cluster made with `xpk cluster create`
  --type TYPE         TPU type of the cluster's node pools, e.g. v5p-64, v5litepod-256, v6e-256
  --slices N          number of slices (multi-slice over DCN; default 1)
  --workload NAME     workload name (default: mmjax-<user>-<time>)
  --project PROJECT   Google Cloud project   --zone ZONE   cluster zone (default: gcloud's)
  --base-image IMAGE  base docker image (default: python:3.11-slim)
  --dry-run           print the xpk commands instead of running them
  -h, --help          this help

Example (the 70B-class LLaVA on v5p-256; two v5p-128 slices: --type v5p-128 --slices 2):
  launch/xpk.sh --cluster my-v5p --type v5p-256 -- \
    mmjax train --config configs/llava/llava_70b_stage2.py --workdir gs://BUCKET/run70b \
      --config.train.init_from=gs://BUCKET/run1/model --config.data.tokenizer=gs://BUCKET/llm/hf_extras

Check the fit first (same names; multi-slice as 2xv5p-128):
  mmjax aot --config configs/llava/llava_70b_stage2.py --topology v5p-256
USAGE
}

cluster="" type="" slices=1 workload="mmjax-${USER:-user}-$(date +%m%d-%H%M%S)" project="" zone=""
base=python:3.11-slim dry=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --cluster) cluster=$2; shift 2 ;;
    --type) type=$2; shift 2 ;;
    --slices) slices=$2; shift 2 ;;
    --workload) workload=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --base-image) base=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z $cluster || -z $type || $# -eq 0 ]]; then usage >&2; exit 2; fi

run() { if [[ $dry -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }
where=(--cluster "$cluster")
[[ -n $project ]] && where+=(--project "$project")
[[ -n $zone ]] && where+=(--zone "$zone")
command=$(printf '%q ' "$@")
repo=$(cd "$(dirname "$0")/.." && pwd)

# xpk copies the working directory into the image built on --base-docker-image.
cd "$repo"
run xpk workload create "${where[@]}" --workload "$workload" --tpu-type "$type" \
  --num-slices "$slices" --base-docker-image "$base" \
  --command "pip install -q -e '.[tpu]' && $command"
echo "submitted $workload; logs: kubectl logs -f -l jobset.sigs.k8s.io/jobset-name=$workload" >&2
# Block until the workload finishes, so the script's exit follows the job.
run xpk workload list "${where[@]}" --filter-by-job "$workload" --wait-for-job-completion "$workload"
