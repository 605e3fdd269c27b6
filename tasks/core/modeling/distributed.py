"""Data-parallel training over several processes with torchrun (``train.processes``).

The train stage re-executes itself under torchrun; every process runs the same ``Trainer``
(DDP). Rank 0 alone writes outputs and checkpoints and logs to MLflow.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def world_size() -> int:
    """Processes in this training run (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in the one process that writes outputs: rank 0, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def launched() -> bool:
    """True inside a process started by torchrun."""
    return "TORCHELASTIC_RUN_ID" in os.environ or world_size() > 1


def _die_with_parent(sig: signal.Signals) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))


def exit_with_launcher() -> None:
    """In a torchrun worker: die when the launcher dies (workers run in new sessions, so a
    killed stage would otherwise leave them writing outputs)."""
    parent = os.getppid()
    _die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:  # the launcher died before the request was made
        os._exit(1)


def relaunch(processes: int, module: str, arguments: list[str]) -> int:
    """Run ``python -m module arguments`` as ``processes`` torchrun workers; its exit code."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", "-m", module, *arguments,
    ]  # fmt: skip
    # One thread per process unless the user chose: N processes x all cores oversubscribes.
    cores = max(1, (os.cpu_count() or 1) // processes)
    env = {"OMP_NUM_THREADS": str(cores), **os.environ}
    # torchrun stops its workers on SIGTERM; it gets one when this process dies.
    return subprocess.call(command, env=env, preexec_fn=lambda: _die_with_parent(signal.SIGTERM))


def summed_over_processes(trainer: Any, counts: list[int]) -> list[int]:
    """``counts`` summed over the training processes (each saw its own share of batches)."""
    if world_size() == 1:
        return counts
    import torch

    summed = trainer.accelerator.reduce(torch.tensor(counts, device=trainer.args.device), "sum")
    return [int(value) for value in summed.tolist()]
