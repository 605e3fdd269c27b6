#!/usr/bin/env bash
# Build .state/gpu-carry/ (git-ignored): what bench/gpu_check.sh needs on the device machine
# that its image lacks (the image has torch 2.11 + CUDA, Python 3.12, accelerate, peft,
# pandas, pyarrow, pyyaml, typer, tokenizers 0.23.2, huggingface-hub 1.33, transformers 5.17;
# not pydantic, datasets, seqeval):
#   whl/       py3.12 manylinux wheels at requirements.lock's versions (seqeval: built here,
#              pure Python; it ships no wheel). transformers 5.24 is trimmed to the model
#              families the product imports (auto, bert, and align/bloom/encoder_decoder that
#              core modules import): 13 MB -> 2.5 MB. The image's tokenizers and
#              huggingface-hub satisfy 5.24's pins (>=0.23.1, >=1.31).
#   model/     the default encoder (all-MiniLM-L6-v2) as a bf16 copy of its weights (45 MB;
#              the fp32 file, 91 MB, would not fit the 64 MiB tree); its config says float32,
#              so transformers loads it upcast (fp32 master weights) on every device
#   datasets/  SST-2 and CoNLL-2003 train+dev from ../shared, gzipped (gpu_check unpacks)
# Usage: make gpu-carry   (or bash bench/gpu_carry.sh); prints the size that travels.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.state/gpu-carry
PY=${PYTHON:-.venv/bin/python}
SHARED=${SHARED:-../shared/datasets}
rm -rf "$CARRY"
mkdir -p "$CARRY/whl" "$CARRY/model" "$CARRY/datasets/sst2" "$CARRY/datasets/conll2003"

pin() { grep -iE "^${1//[-_]/[-_]}==" requirements.lock | cut -d' ' -f1; }
WHEELS=(transformers pydantic pydantic-core annotated-types typing-inspection typing-extensions
        datasets dill multiprocess)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux_2_5_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
SPECS=()
for name in "${WHEELS[@]}"; do
  spec=$(pin "$name")
  [ -n "$spec" ] || { echo "gpu_carry: $name is not in requirements.lock" >&2; exit 1; }
  SPECS+=("$spec")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$CARRY/whl" "${SPECS[@]}"
"$PY" -m pip wheel -q --no-deps -w "$CARRY/whl" "$(pin seqeval)"
"$PY" bench/gpu_carry.py trim "$CARRY"/whl/transformers-*.whl
"$PY" bench/gpu_carry.py model "$CARRY/model"
for f in sst2/train.tsv sst2/dev.tsv conll2003/train.txt conll2003/dev.txt; do
  gzip -9 -n -c "$SHARED/$f" > "$CARRY/datasets/$f.gz"
done

tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carry=$(du -sb "$CARRY" | cut -f1)
du -sh "$CARRY"/*
echo "gpu_carry: carry $((carry / 1048576)) MiB + tree $((tree / 1048576)) MiB" \
  "= $(((carry + tree) / 1048576)) MiB (device limit 64 MiB)"
[ $((carry + tree)) -lt $((62 * 1048576)) ] || { echo "gpu_carry: too large" >&2; exit 1; }
