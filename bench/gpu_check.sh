#!/usr/bin/env bash
# The GPU check of issue 13, one script for the device tool (a session lent an H100/H200).
#
# Here, once:   make gpu-carry        # builds .state/gpu-carry/ (~52 MiB; limit 64 MiB)
# Then call the device tool's `run` with exactly:
#   command:   bash bench/gpu_check.sh
#   carry:     [".state/gpu-carry"]
#   timeout_s: 540
# It writes under $OUT (at most 8 files come back): env.txt, cuda_tests.log, sdpa.md,
# throughput.md (the bench/RESULTS.md sections of both throughput runs), throughput.jsonl
# (their JSON results, one line per run: bench/render.py renders them again), finetune.jsonl
# and check.log (everything printed). Paste throughput.md, sdpa.md and the finetune lines into
# bench/RESULTS.md with the card named (env.txt), then `give_back`.
#
# What it runs (about 5-7 minutes on an H100):
#  1. the CUDA-only tests (tests/integration/test_batching.py -k cuda);
#  2. bench/sdpa_backends.py: each SDPA backend on the bucket shapes (first call = build);
#  3. bench/throughput.py on SST-2 and CoNLL: product with its CUDA defaults (token budget
#     16384) and at batch 32 (--max-tokens null) vs Trainer best flags, defaults, fixed-128;
#  4. bench/finetune_check.py, 1 epoch of a 4,000-example SST-2 sample at batch 32, first on
#     the machine's CPU (CUDA hidden: the CPU path, its precision) then on the GPU: dev
#     accuracy within 1.5 points (bf16 vs the CPU's precision, different kernels); then 1
#     epoch of all of SST-2 at batch 32 and with the auto token budget (same training
#     tokens): the accuracy guard, within 0.5 points.
#
# Dry run on a CPU (checks the script and the carried files end to end, tiny sizes):
#   DRY=1 bash bench/gpu_check.sh      # uses .venv/bin/python and the trimmed transformers
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=.state/gpu-carry
export OUT=${OUT:-.state/tmp/gpu-check-out}
mkdir -p "$OUT"
rm -f "$OUT/throughput.md" "$OUT/throughput.jsonl"  # both are appended to, run by run
export PYTHONUNBUFFERED=1
DATA=.state/tmp/gpu-data
[ -d "$CARRY/whl" ] || { echo "no $CARRY: run make gpu-carry first (and carry it)"; exit 2; }

if [ -z "${DRY:-}" ]; then
  PY=python3
  SITE=/tmp/site
  # 30,000 examples: 18 steps of the 16,384-token budget stay inside one epoch (an epoch end
  # would evaluate and checkpoint inside the timed window); CoNLL has 14,041 in all.
  EXAMPLES=30000; STEPS=15; REF_EXAMPLES=4000; FULL=0; TIMEOUT=150; TOK=20000; WARM=3; DEV=0; EX2=4096
else
  PY=.venv/bin/python
  SITE=.state/tmp/gpu-site
  EXAMPLES=96; STEPS=1; REF_EXAMPLES=64; FULL=96; TIMEOUT=1200; TOK=300; WARM=1; DEV=96; EX2=96
fi
rm -rf "$SITE"
if [ -z "${DRY:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$CARRY"/whl/*.whl || exit 1
else  # the trimmed transformers only: the venv has the rest (py3.11 here)
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" \
    "$CARRY"/whl/transformers-*.whl || exit 1
fi
export PYTHONPATH=$PWD/$SITE
mkdir -p "$DATA/sst2" "$DATA/conll2003"
for f in sst2/train.tsv sst2/dev.tsv conll2003/train.txt conll2003/dev.txt; do
  gunzip -c "$CARRY/datasets/$f.gz" > "$DATA/$f"
done
MODEL=$CARRY/model

{
  set -x
  { nvidia-smi || true; $PY -c "import torch, transformers, sys; print(sys.version); \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name() if torch.cuda.is_available() else ''); \
print('transformers', transformers.__version__, transformers.__file__)"; } > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
  [ -n "${DRY:-}" ] || timeout 120 $PY -m pytest -q -p no:cacheprovider tests/integration/test_batching.py -k "cuda or bucket" \
    > "$OUT/cuda_tests.log" 2>&1
  [ -n "${DRY:-}" ] || tail -5 "$OUT/cuda_tests.log"
  timeout 90 $PY bench/sdpa_backends.py --model "$MODEL" --out "$OUT/sdpa.md"
  timeout $TIMEOUT $PY bench/throughput.py --model "$MODEL" --shared "$DATA" \
    --examples $EXAMPLES --steps $STEPS --warmup-steps $WARM --batch-size 32 --tokenize-examples $TOK \
    --results "$OUT/throughput.md" --json "$OUT/throughput.jsonl" ${DRY:+--matmul-size 256}
  timeout $TIMEOUT $PY bench/throughput.py --model "$MODEL" --shared "$DATA" \
    --examples $EX2 --steps $STEPS --warmup-steps $WARM --batch-size 32 --max-tokens null \
    --datasets sst2 --tokenize-examples $TOK --results "$OUT/throughput.md" \
    --json "$OUT/throughput.jsonl" ${DRY:+--matmul-size 256}
  FT="$PY bench/finetune_check.py --model $MODEL --shared $DATA --epochs 1 --batch-size 32"
  FT="$FT --dev $DEV"
  # The CPU path on the same machine (its 16 cores), then the GPU path, same sample and model.
  CUDA_VISIBLE_DEVICES= timeout $TIMEOUT $FT --examples $REF_EXAMPLES --max-tokens null \
    --out "$OUT/ft_cpu.json"
  timeout $TIMEOUT $FT --examples $REF_EXAMPLES --max-tokens null \
    --reference "$OUT/ft_cpu.json" --tolerance 1.5 --out "$OUT/ft_ref.json"
  timeout $((TIMEOUT + 60)) $FT --examples $FULL --max-tokens null --out "$OUT/ft_batch.json"
  timeout $TIMEOUT $FT --examples $FULL --max-tokens auto ${DRY:+--max-tokens 1024} \
    --reference "$OUT/ft_batch.json" --tolerance 0.5 --out "$OUT/ft_budget.json"
  cat "$OUT"/ft_*.json > "$OUT/finetune.jsonl"; rm -f "$OUT"/ft_*.json
} > "$OUT/check.log" 2>&1
rc=$?
grep -v "^{'" "$OUT/check.log" | tail -80
# A step that crashed fails the check (the block's status is only its last command's).
grep -q '^Traceback' "$OUT/check.log" && { echo "gpu_check: a step failed (see check.log)"; rc=1; }
echo "gpu_check: done (rc $rc); files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $rc
