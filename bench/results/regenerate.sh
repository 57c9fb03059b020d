#!/usr/bin/env bash
# Regenerates every figure README's "What is measured" quotes, each into its own file here
# (the full printed table, whose last line is the benchmark's JSON). On 2 cores: about 30 minutes.
#   bash bench/results/regenerate.sh            # all
#   bash bench/results/regenerate.sh e2e        # one of: e2e e2e-seed1 rollout simulate trainer drafter_packing weight_sync lend_contention
set -euo pipefail
cd "$(dirname "$0")/../.."
source .venv/bin/activate
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
out=bench/results
want="${1:-all}"
run() {  # name, command...: the output of the command, with the machine it ran on
    local name=$1; shift
    [[ $want == all || $want == "$name" ]] || return 0
    echo "[regenerate] $name: $*" >&2
    # a benchmark that fails its own check (e.g. `bench e2e` when rollouts differ) exits non-zero:
    # its output is saved all the same and the others still run
    # (progress and errors go to runs/regenerate/NAME.err, kept out of the saved figures)
    mkdir -p runs/regenerate
    { echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores: $*"; "$@" 2>"runs/regenerate/$name.err" | tr '\r' '\n' | grep -v '^\s*$'; } > "$out/$name.txt" \
        || echo "[regenerate] $name exited with status $? (its output is saved; errors in runs/regenerate/$name.err)" >&2
    # the final JSON line (a benchmark's); a command that prints only JSON: all of it, on one line
    if [[ $(sed -n 2p "$out/$name.txt") == "{" ]]; then
        tail -n +2 "$out/$name.txt" | python -c 'import json, sys; print(json.dumps(json.load(sys.stdin)))' > "$out/$name.json"
    else
        tail -n 1 "$out/$name.txt" > "$out/$name.json"
    fi
}
run e2e tlt bench e2e examples/quickstart.yaml --out runs/bench-e2e
# a second run (this machine is noisy) at another seed: other rollouts, another training
run e2e-seed1 tlt bench e2e examples/quickstart.yaml --seed 1 --out runs/bench-e2e-seed1
run rollout tlt bench rollout --temperature 1.0
run simulate tlt simulate --gpus 64 --json
run trainer python bench/trainer.py examples/quickstart.yaml --rounds 3
run drafter_packing python bench/drafter_packing.py examples/quickstart.yaml --rounds 5
run weight_sync python bench/weight_sync.py --models tiny,0.5b --rounds 3 --shards 1
run lend_contention python bench/lend_contention.py examples/quickstart.yaml --rounds 15
