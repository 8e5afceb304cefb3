#!/usr/bin/env bash
# Launch scripts/train_imagenet.py with torchrun on one node or several.
#
# Usage:
#   scripts/train_multi_gpu.sh [launcher options] [--] TRAIN_ARGS...
#
# Launcher options (each also settable by the environment variable in brackets):
#   --nodes N            number of nodes                          [NODES, default 1]
#   --gpus-per-node N    ranks per node                           [GPUS_PER_NODE, default: visible GPUs]
#   --node-rank R        this node's index, 0..N-1                [NODE_RANK, default 0]
#   --master-addr HOST   address of node 0                        [MASTER_ADDR, default 127.0.0.1]
#   --master-port PORT   free TCP port on node 0                  [MASTER_PORT, default 29500]
#   --python PATH        interpreter                              [PYTHON, default .venv/bin/python or python3]
#   --dry-run            print the torchrun command, do not run it
# Everything else (or everything after --) goes to train_imagenet.py unchanged; --batch-size is per GPU.
#
# Examples:
#   # one node, all its GPUs
#   scripts/train_multi_gpu.sh --data /data/imagenet --arch resnet50 --epochs 90 --batch-size 256 --lr 0.8 --amp
#   # two nodes with 8 GPUs each: run on both, NODE_RANK=0 on the node whose address is MASTER_ADDR
#   NODES=2 GPUS_PER_NODE=8 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/train_multi_gpu.sh --data ... (node 0)
#   NODES=2 GPUS_PER_NODE=8 NODE_RANK=1 MASTER_ADDR=10.0.0.1 scripts/train_multi_gpu.sh --data ... (node 1)
#
# Failures: if any worker dies, torchrun stops the workers of its node, names the rank and exits non-zero;
# ranks on other nodes see their collectives fail ("Connection reset by peer", or after --dist-timeout
# minutes) and name the rank behind it: one that raised reports its error, one that was killed is named as
# the rank that did not report within --dist-report-wait seconds (its node, host and pid).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"

usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "train_multi_gpu.sh: error: $*" >&2; exit 2; }

nodes="${NODES:-1}"
gpus="${GPUS_PER_NODE:-}"
node_rank="${NODE_RANK:-0}"
master_addr="${MASTER_ADDR:-127.0.0.1}"
master_port="${MASTER_PORT:-29500}"
python="${PYTHON:-}"
dry_run=0
train_args=()

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nodes) need_value "$@"; nodes="$2"; shift 2 ;;
        --gpus-per-node) need_value "$@"; gpus="$2"; shift 2 ;;
        --node-rank) need_value "$@"; node_rank="$2"; shift 2 ;;
        --master-addr) need_value "$@"; master_addr="$2"; shift 2 ;;
        --master-port) need_value "$@"; master_port="$2"; shift 2 ;;
        --python) need_value "$@"; python="$2"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; train_args+=("$@"); break ;;
        *) train_args+=("$1"); shift ;;
    esac
done

if [[ -z "$python" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python="python3"; fi
fi
if [[ -z "$gpus" ]]; then
    gpus="$("$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
    [[ "$gpus" -ge 1 ]] || die "no GPU visible; set GPUS_PER_NODE (and pass --device cpu to train on CPUs)"
fi

is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_int "$nodes" && [[ "$nodes" -ge 1 ]] || die "--nodes/NODES must be an integer >= 1, got '$nodes'"
is_int "$gpus" && [[ "$gpus" -ge 1 ]] || die "--gpus-per-node/GPUS_PER_NODE must be an integer >= 1, got '$gpus'"
is_int "$node_rank" && [[ "$node_rank" -lt "$nodes" ]] \
    || die "--node-rank/NODE_RANK must be an integer in [0, $nodes), got '$node_rank'"
is_int "$master_port" && [[ "$master_port" -ge 1 && "$master_port" -le 65535 ]] \
    || die "--master-port/MASTER_PORT must be a TCP port, got '$master_port'"

cmd=("$python" -m torch.distributed.run --nproc_per_node="$gpus")
if [[ "$nodes" -eq 1 ]]; then
    # One node: a private rendezvous on localhost (a busy MASTER_PORT would only matter across nodes).
    cmd+=(--standalone)
else
    cmd+=(--nnodes="$nodes" --node_rank="$node_rank" --master_addr="$master_addr" --master_port="$master_port")
fi
cmd+=("$here/train_imagenet.py" "${train_args[@]}")

echo "train_multi_gpu.sh: ${nodes} node(s) x ${gpus} rank(s), node rank ${node_rank}" >&2
if [[ "$dry_run" -eq 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
exec "${cmd[@]}"
