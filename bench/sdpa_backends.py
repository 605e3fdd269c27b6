"""Benchmark (not a test): each scaled-dot-product-attention backend on the bucket shapes.

The encoder's forward+backward under bf16 autocast, ~16k padded tokens per step, one step per
bucket width (tokenize.max_length 128): the first call of each width (kernel choice, cuDNN
graph build) and the mean of 5 more. Keeps the evidence for ``configure_cuda_attention``
(tasks/core/modeling/precision.py). CUDA only; on a CPU it prints one line and exits 0.

    python3 bench/sdpa_backends.py --model .state/gpu-carry/model --out sdpa.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("sdpa_backends: no CUDA device, nothing measured")
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import AutoModelForSequenceClassification

    from tasks.core.data.batching import padded_length

    widths = sorted({padded_length(n) for n in range(1, 129)})  # the token-budget groups
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2).cuda()
    backends = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    lines = [
        f"SDPA backends, {torch.cuda.get_device_name()}, torch {torch.__version__}: "
        f"forward+backward, bf16 autocast, ~{args.tokens} padded tokens per step",
        "",
        "| backend | first calls, all buckets (s) | steady ms/step (mean over buckets) "
        "| real tokens/s steady |",
        "|---|---|---|---|",
    ]
    for name, backend in backends.items():
        first = steady = 0.0
        tokens = 0
        try:
            for width in widths:
                rows = max(1, args.tokens // width)
                ids = torch.randint(1000, 20000, (rows, width), device="cuda")
                labels = torch.zeros(rows, dtype=torch.long, device="cuda")
                with sdpa_kernel([backend]), torch.autocast("cuda", dtype=torch.bfloat16):
                    for i in range(6):
                        torch.cuda.synchronize()
                        started = time.perf_counter()
                        model(input_ids=ids, labels=labels).loss.backward()
                        torch.cuda.synchronize()
                        spent = time.perf_counter() - started
                        if i == 0:
                            first += spent
                        else:
                            steady += spent / 5
                            tokens += rows * width / 5
            per_step = steady / len(widths) * 1000
            lines.append(f"| {name} | {first:.2f} | {per_step:.1f} | {tokens / steady:,.0f} |")
        except RuntimeError as exc:  # a backend that does not support the shape/dtype
            lines.append(f"| {name} | failed: {str(exc).splitlines()[0][:80]} | | |")
        model.zero_grad(set_to_none=True)
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
