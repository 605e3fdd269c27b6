"""Timing: GPU syncs, the matmul peak, and a Trainer stopped after N steps that clocks each
step and counts its real and padded tokens."""

from __future__ import annotations

import contextlib
import gc
import time
from typing import Any


def sync() -> None:
    """Wait for queued GPU work (no-op on CPU) so that wall-clock times are complete."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    """Drop unreferenced models (and the CUDA cache) between paths."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def cudnn_attention(enabled: bool) -> Any:
    """torch's cuDNN SDPA backend on (its default) or off, for one path (no-op on CPU)."""
    import torch

    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def _best_matmul_seconds(a: Any, b: Any, repeats: int, inner: int) -> float:
    """The fastest of ``repeats`` means of ``inner`` products ``a @ b`` (after two warm-ups)."""
    for _ in range(2):
        a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - started) / inner)
    return best


def matmul_peak(device: str, size: int, repeats: int = 5, inner: int = 3) -> dict[str, float]:
    """Best FLOP/s of ``size``x``size`` matmuls, fp32 and bf16, on the current threads."""
    import torch

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        peaks[name] = 2 * size**3 / _best_matmul_seconds(a, b, repeats, inner)
        del a, b
    return peaks


def timed_trainer(base: type, max_steps: int, warmup: int, sink: list | None = None) -> type:
    """``base`` stopped after ``max_steps`` optimizer steps, with per-step clock and counts."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self, times: dict[int, float]):
            self.times = times

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sync()
            self.times[0] = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step in (warmup, max_steps):
                sync()  # only at the window's ends: no extra stalls inside it
            self.times[state.global_step] = time.perf_counter()

    class Timed(base):
        def __init__(self, *args: Any, **kw: Any):
            kw["args"].max_steps = max_steps
            super().__init__(*args, **kw)
            self.step_times: dict[int, float] = {}
            self.step_counts: list[tuple[Any, ...]] = []  # per micro-batch, tensors (no sync)
            self.add_callback(Clock(self.step_times))
            if sink is not None:
                sink.append(self)

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            mask = inputs["attention_mask"]
            real = mask.sum(dim=1)
            self.step_counts.append((mask.shape[0], mask.numel(), real.sum(), (real * real).sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    return Timed


def window(trainer: Any, warmup: int, steps: int) -> dict[str, Any]:
    """Samples, tokens and seconds of the timed steps ``warmup+1 .. warmup+steps``."""
    per_step = trainer.args.gradient_accumulation_steps
    if trainer.state.global_step < warmup + steps:
        raise RuntimeError(f"only {trainer.state.global_step} of {warmup + steps} steps ran")
    counts = trainer.step_counts[warmup * per_step : (warmup + steps) * per_step]
    return {
        "steps": steps,
        "seconds": trainer.step_times[warmup + steps] - trainer.step_times[warmup],
        "samples": sum(c[0] for c in counts),
        "padded": sum(c[1] for c in counts),
        "tokens": sum(int(c[2]) for c in counts),
        "squares": sum(int(c[3]) for c in counts),
    }
