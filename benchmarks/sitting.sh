#!/usr/bin/env bash
# One benchmark sitting, as benchmarks/WORKLOADS.md asks: per workload, kzoo and its
# PyTorch peer (benchmarks/peers/) alternate (kzoo, peer, kzoo, peer), all lines go
# to one file, and the matmul peak measured first is 100% of pct_of_peak on both sides.
#
#   benchmarks/sitting.sh OUT.jsonl PEER_PYTHON [WORKLOAD ...]
#   make bench-peers PEER_PYTHON=... [OUT=...] [WORKLOADS="..."]   # the same
#
# PEER_PYTHON is a Python with torch==2.13.0, diffusers and vector-quantize-pytorch
# (a venv outside the repo; README.md, "Benchmarks"). kzoo runs with the jit_compile
# setting chosen per workload by measurement (JIT below); one extra kzoo run with the
# other setting fills the jit table. Run it on an otherwise idle machine; every line
# records the load it saw. Summarise with: python -m benchmarks.compare OUT.jsonl
#
# PRECISION=mixed_bfloat16 times both sides in bfloat16 instead: kzoo with
# `--precision mixed_bfloat16`, the peers with `--precision autocast_bfloat16`
# (torch.autocast), kzoo's main runs without XLA; the matmul peak stays float32.
# STEPS=N and WARMUP=N override both sides' step counts (a smoke run, not a sitting).
set -euo pipefail

out=${1:?usage: sitting.sh OUT.jsonl PEER_PYTHON [WORKLOAD ...]}
peer_python=${2:?usage: sitting.sh OUT.jsonl PEER_PYTHON [WORKLOAD ...]}
shift 2
workloads=("$@")
if [ ${#workloads[@]} -eq 0 ]; then
  workloads=(vq_fwd_bwd vq_fwd_bwd_ste vq_learnable vqmodel_train unet_train unet_sample unet_sample_b1 dit_train)
fi

here=$(cd "$(dirname "$0")/.." && pwd)
kzoo_python=${KZOO_PYTHON:-$here/.venv/bin/python}
case "$out" in /*) ;; *) out=$PWD/$out ;; esac # both sides run from the repository root

if ! "$peer_python" -c "import torch, diffusers, vector_quantize_pytorch" 2>/dev/null; then
  echo "sitting.sh: PEER_PYTHON must be a Python with torch, diffusers and" \
    "vector-quantize-pytorch (README.md, Benchmarks). Received: PEER_PYTHON=$peer_python" >&2
  exit 2
fi

# jit_compile per workload, chosen by measurement (benchmarks/README.md).
declare -A JIT=(
  [vq_fwd_bwd]=false [vq_fwd_bwd_ste]=false [vq_learnable]=false
  [vqmodel_train]=false [unet_train]=false [unet_sample]=false [unet_sample_b1]=true [dit_train]=false
)
other() { [ "$1" = true ] && echo false || echo true; }

precision=${PRECISION:-float32}
case "$precision" in
  float32 | mixed_bfloat16) ;;
  *) echo "PRECISION must be float32 or mixed_bfloat16. Received: PRECISION=$precision" >&2; exit 2 ;;
esac
counts=()
[ -n "${STEPS:-}" ] && counts+=(--steps "$STEPS")
[ -n "${WARMUP:-}" ] && counts+=(--warmup "$WARMUP")
kzoo() {
  (cd "$here" && "$kzoo_python" -m benchmarks.run --precision "$precision" --out "$out" \
    ${counts[@]+"${counts[@]}"} "$@" >/dev/null)
}
peer_precision=float32
[ "$precision" = mixed_bfloat16 ] && peer_precision=autocast_bfloat16
peer() {
  (cd "$here" && "$peer_python" -m benchmarks.peers --precision "$peer_precision" --out "$out" \
    ${counts[@]+"${counts[@]}"} "$@" >/dev/null)
}

kzoo --workload matmul_peak --jit-compile true
peak=$("$kzoo_python" - "$out" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(max(r["achieved_flops_per_s_best"] for r in rows
          if r["workload"] == "matmul_peak" and r.get("framework") == "kzoo" and r["status"] == "ok"))
EOF
)
echo "peak: $peak FLOP/s" >&2
peer --workload matmul_peak --peak-flops "$peak"

for name in "${workloads[@]}"; do
  jit=${JIT[$name]:-false}
  # XLA in bfloat16 is 2-2.5x slower on CPUs with AMX (its kernels skip the AMX units
  # oneDNN uses; benchmarks/README.md): bfloat16 rows run without it.
  [ "$precision" = mixed_bfloat16 ] && jit=false
  for round in 1 2; do
    echo "$name round $round" >&2
    kzoo --workload "$name" --jit-compile "$jit" --peak-flops "$peak"
    peer --workload "$name" --peak-flops "$peak"
  done
  kzoo --workload "$name" --jit-compile "$(other "$jit")" --peak-flops "$peak"
done
