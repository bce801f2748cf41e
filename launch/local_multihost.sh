#!/usr/bin/env bash
# Runs one command as N cooperating JAX processes on this machine, each with D fake CPU devices
# (default 2 x 4), the way a multi-host TPU job runs one process per host. Every process gets
# MMJAX_COORDINATOR / MMJAX_NUM_PROCESSES / MMJAX_PROCESS_ID (read by `mmjax train`, see
# mmjax/distributed.py); output is prefixed with the process id; the exit status is the first
# failing process's.
#
#   launch/local_multihost.sh [-n PROCESSES] [-d DEVICES] [-p PORT] -- mmjax train --workdir /tmp/mh
set -euo pipefail
processes=2 devices=4 port=$((20000 + RANDOM % 20000))
while getopts "n:d:p:" opt; do
  case $opt in
    n) processes=$OPTARG ;; d) devices=$OPTARG ;; p) port=$OPTARG ;;
    *) echo "usage: $0 [-n PROCESSES] [-d DEVICES] [-p PORT] -- COMMAND..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ ${1:-} == "--" ]] && shift
[[ $# -gt 0 ]] || { echo "usage: $0 [-n PROCESSES] [-d DEVICES] [-p PORT] -- COMMAND..." >&2; exit 2; }

pids=()
for ((i = 0; i < processes; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices" \
  MMJAX_COORDINATOR="localhost:$port" MMJAX_NUM_PROCESSES=$processes MMJAX_PROCESS_ID=$i \
    "$@" > >(sed "s/^/[$i] /") 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || { [[ $status -eq 0 ]] && status=$?; }
done
exit $status
