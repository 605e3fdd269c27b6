"""Device and precision: bf16/fp16/fp32 by what the device supports, CUDA attention."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from tasks.core.errors import StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    device: str  # cuda | cpu
    dtype: str  # bf16 | fp16 | fp32

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast for inference, the same mixed precision the Trainer uses in training."""
        import torch

        if self.dtype == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.dtype == "bf16" else torch.float16
        return torch.autocast(device_type=self.device, dtype=dtype)


def cpu_supports_bf16() -> bool:
    """True when the CPU does bf16 arithmetic natively (AVX512-BF16 or AMX); there bf16
    autocast is 1.6-1.7x faster than fp32 (see DESIGN.md). oneDNN also reports bf16 support
    on plain AVX512, where it is emulated and slower than fp32 (bench/RESULTS.md), so its
    answer is not enough."""
    import torch

    native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, private
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in native)


def configure_cuda_attention() -> None:
    """Keep PyTorch's scaled-dot-product attention off the cuDNN backend.

    With bf16 on CUDA, SDPA prefers cuDNN attention, which builds a graph for every new
    sequence length: measured on an H200 (issue 13), training ran 4.5x slower with it than
    without (flash / memory-efficient attention then run). Buckets bound the shapes, but
    every first step of a bucket would still pay the build; bench/gpu_check.sh times each
    backend on the bucket shapes.
    """
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


def choose_precision(requested: str = "auto") -> Precision:
    """CUDA when present (bf16 if supported, else fp16); on CPU bf16 autocast when the CPU
    supports it, else fp32. ``requested`` (bf16|fp16|fp32) forces one.

    Raises:
        StageError: the forced precision is not available on this machine.
    """
    import torch

    if torch.cuda.is_available():
        configure_cuda_attention()
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return Precision("cuda", "bf16" if bf16_ok else "fp16")
        if requested == "bf16" and not bf16_ok:
            raise StageError("train.precision: bf16 is not supported by this GPU (use fp16)")
        return Precision("cuda", requested)
    if requested == "auto":
        return Precision("cpu", "bf16" if cpu_supports_bf16() else "fp32")
    if requested == "fp16":
        raise StageError("train.precision: fp16 needs a CUDA GPU (on CPU use bf16 or fp32)")
    return Precision("cpu", requested)
