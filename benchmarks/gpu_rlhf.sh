#!/usr/bin/env bash
# The GPU check of rlhf_ppo_gpt2.py (issue 33), one call of at most 8 minutes:
# one PPO iteration at GPT-2 124M and 355M (random weights; policy, reference, RM and value
# model), fp32 and --bf16, without and with --gradient-checkpointing: response tokens/s, peak
# GPU memory and model FLOP/s, into benchmarks/results/rlhf_gpu.json; with two GPUs or more,
# also the tiny three-stage run under torchrun with 2 processes (NCCL), its wall time.
#     bash benchmarks/gpu_rlhf.sh             # on a GPU machine
#     bash benchmarks/gpu_rlhf.sh --dry-run   # anywhere: a 2-layer model on the CPU, seconds
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=""
if [[ "${1:-}" == "--dry-run" ]]; then DRY="--dry-run"; fi
python benchmarks/bench_rlhf.py --gpu-check $DRY
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [[ -z "$DRY" && "$GPUS" -ge 2 ]]; then
    OUT=benchmarks/out/rlhf_gpu_torchrun
    START=$(date +%s)
    torchrun --nproc-per-node 2 rlhf_ppo_gpt2.py --model-name tiny --seed 1001 \
        --sample-every 0 --output-dir "$OUT" --overwrite | tail -1 > "$OUT.json.line"
    echo "{\"torchrun_2_gpus_tiny_wall_s\": $(( $(date +%s) - START )), \"summary\": $(cat "$OUT.json.line")}" \
        > benchmarks/results/rlhf_gpu_torchrun.json
    cat benchmarks/results/rlhf_gpu_torchrun.json
fi
