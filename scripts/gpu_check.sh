#!/usr/bin/env bash
# The GPU checks of textrnn in one call with a fixed time budget, for a machine with a CUDA GPU and PyTorch
# already installed (no network needed): the CUDA tests, training speed with and without CUDA graphs and in
# each precision, NCCL under torchrun, and `textrnn bench --device cuda`. Everything lands as JSON and logs in
# $OUT (default gpu-results/). Run from the repository root:
#
#     OUT=gpu-results BUDGET=540 bash scripts/gpu_check.sh
#
# The corpus is the Time Machine when $TEXTRNN_DATA_DIR or ../shared/corpora holds it, else synthetic text.
set -u
OUT=${OUT:-gpu-results}
BUDGET=${BUDGET:-540}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }
step() {  # step NAME SECONDS COMMAND...: run COMMAND with at most SECONDS (and what is left), logging to $OUT/NAME.log
  local name=$1 seconds=$2
  shift 2
  local limit=$(($(left) < seconds ? $(left) : seconds))
  if [ "$limit" -le 5 ]; then echo "skip $name: out of time" | tee -a "$OUT/summary.log"; return; fi
  echo "== $name (up to ${limit}s)" | tee -a "$OUT/summary.log"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "   exit $? after $(($(date +%s) - start))s" | tee -a "$OUT/summary.log"
}

"$python" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0), torch.backends.cudnn.version())" \
  >"$OUT/summary.log" 2>&1 || { echo "no CUDA torch here"; exit 1; }
corpus=timemachine
[ -f "${TEXTRNN_DATA_DIR:-../shared/corpora}/timemachine.txt" ] || {
  "$python" -c "from textrnn.bench import corpus_file; print(corpus_file('$OUT', 2_000_000))" >"$OUT/corpus.txt"
  corpus=$(cat "$OUT/corpus.txt")
}
export TEXTRNN_DATA_DIR=${TEXTRNN_DATA_DIR:-$PWD/../shared/corpora}

step tests 150 "$python" -m pytest -q -m gpu tests/test_step.py tests/test_reliability.py
train() {  # train NAME OPTIONS...: 20 s of textrnn train, its --json summary in $OUT/NAME.json
  local name=$1
  shift
  step "$name" 60 "$python" -m textrnn train --corpus "$corpus" --device cuda --max-seconds 20 --eval-every 100000 \
    --out "$OUT/runs/$name" --json "$@"
  tail -n 1 "$OUT/$name.log" >"$OUT/$name.json" 2>/dev/null
}
d2l=(--cell gru --hidden-size 256 --num-layers 1 --batch-size 32 --num-steps 35 --dropout 0)
large=(--cell lstm --hidden-size 1024 --num-layers 3 --batch-size 128 --num-steps 100 --dropout 0)
train d2l-eager "${d2l[@]}" --cuda-graphs off
train d2l-graphs "${d2l[@]}" --cuda-graphs on
train d2l-scratch-graphs "${d2l[@]}" --backend scratch --cuda-graphs on
train default-graphs --cuda-graphs on
train large-eager "${large[@]}" --cuda-graphs off
train large-graphs "${large[@]}" --cuda-graphs on
train large-fp16 "${large[@]}" --precision fp16
train large-tf32 "${large[@]}" --precision tf32 --cuda-graphs on
step nccl 60 "$python" -m torch.distributed.run --standalone --nproc_per_node 1 -m textrnn train --corpus "$corpus" \
  --device cuda --max-steps 50 --out "$OUT/runs/nccl" --json
step bench "$(left)" "$python" -m textrnn bench --device cuda --quick --json "$OUT/bench-cuda.json"
rm -rf "$OUT/runs"  # weights do not come back; the summaries do
"$python" - "$OUT" <<'EOF' || true
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = {}
for path in sorted(out.glob("*.json")):
    try:
        rows[path.stem] = json.loads(path.read_text())
    except ValueError:
        pass
(out / "results.json").write_text(json.dumps(rows, indent=1))
for name, row in rows.items():
    if isinstance(row, dict) and "tokens_per_sec" in row:
        print(f"{name}: {row['tokens_per_sec']:,.0f} tokens/s, val ppl {row.get('val_perplexity')}")
EOF
