"""Helpers of bench/gpu_carry.sh: trim the transformers wheel, save the bf16 model copy.

python bench/gpu_carry.py trim WHEEL     # keep only the model families the product imports
python bench/gpu_carry.py model DIR      # the default encoder, bf16 weights, float32 config
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# transformers.models.* imported by train/tune/evaluate/tokenize with the default (BERT)
# encoder, peft included: `sys.modules` after a run (bench/gpu_check.sh DRY=1 checks it).
KEEP_MODELS = {"auto", "bert", "align", "bloom", "encoder_decoder", "__init__.py"}


def trim(wheel: str) -> None:
    """Rewrite ``wheel`` without the model families outside :data:`KEEP_MODELS`."""
    tmp = wheel + ".tmp"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            parts = info.filename.split("/")
            model_file = parts[:2] == ["transformers", "models"] and len(parts) > 2
            if model_file and parts[2] not in KEEP_MODELS:
                continue
            out.writestr(info, src.read(info.filename))
    os.replace(tmp, wheel)


def save_model(target: str) -> None:
    """The default encoder with bf16 weights; config dtype float32, so loads upcast it."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    import tasks  # noqa: F401 - offline
    from tasks.core.pretrained.model import default_model_path

    source, out = default_model_path(), Path(target)
    model = AutoModel.from_pretrained(source, dtype=torch.float32)
    model.to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    {"trim": trim, "model": save_model}[sys.argv[1]](sys.argv[2])
