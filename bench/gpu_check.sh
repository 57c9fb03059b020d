#!/usr/bin/env bash
# Every GPU check of issue 15 in one run on a CUDA machine (torch only: no Ray, no vLLM).
#
#   bash bench/gpu_check.sh prepare       # here, once: the tiny model and a warmed-up drafter
#                                         # into gpu-assets/ (about 7 MB, untracked: it travels)
#   bash bench/gpu_check.sh [OUT_DIR]     # on the GPU machine: OUT_DIR/gpu-check.json and
#                                         # OUT_DIR/gpu-check.json.costs.json (default: $OUT or .)
#   bash bench/gpu_check.sh smoke [DIR]   # on a CPU: the same script with the tiny shape, small
#
# Then, here: tlt simulate --gpus 64 --costs OUT_DIR/gpu-check.json.costs.json
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=gpu-assets
case "${1:-run}" in
  prepare)
    cache="${TLT_CACHE_DIR:-$HOME/.cache/tlt}"
    model=$(ls -dt "$cache"/models/tiny-arith-* 2>/dev/null | grep -v '\.lock$' | head -1)
    drafter=$(ls -dt "$cache"/drafters/tiny-arith-*-w600-p512-s0 2>/dev/null | head -1)
    if [[ -z "$model" || -z "$drafter" || ! -f "$drafter/model.safetensors" ]]; then
      echo "no tiny-arith model or warmed drafter under $cache; run 'tlt bench rollout' once (it bootstraps both)" >&2
      exit 2
    fi
    rm -rf "$ASSETS" && mkdir -p "$ASSETS/model" "$ASSETS/drafter"
    cp "$model"/*.json "$model"/model.safetensors "$ASSETS/model/"
    cp "$drafter"/config.json "$drafter"/model.safetensors "$ASSETS/drafter/"
    du -sh "$ASSETS"
    ;;
  smoke)
    out="${2:-.}"
    PYTHONPATH=workers python bench/gpu_engine.py --all --quick --shape tiny --prompt 32 --out "$out/gpu-check.json" \
      $( [[ -d "$ASSETS/model" ]] && echo --tiny-model "$ASSETS/model" --tiny-drafter "$ASSETS/drafter" )
    ;;
  *)
    out="${1:-${OUT:-.}}"
    [[ "${1:-}" == run ]] && out="${OUT:-.}"
    mkdir -p "$out"
    PYTHONPATH=workers python bench/gpu_engine.py --all --out "$out/gpu-check.json" \
      --tiny-model "$ASSETS/model" --tiny-drafter "$ASSETS/drafter"
    ;;
esac
