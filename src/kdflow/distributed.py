"""Devices and torch.distributed: one process or many under ``torchrun``, same code.

Everything that asks "which rank am I" or "wait for the others" lives here, so the Trainer
and the stages never touch ``torch.distributed`` directly.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from kdflow.errors import KdflowError, ParamsError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; under torchrun each rank takes its local GPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise KdflowError("device cuda was asked for (train.device) but no CUDA GPU is visible")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "mps" and not torch.backends.mps.is_available():
        raise KdflowError("device mps was asked for (train.device) but MPS is not available")
    return torch.device(name)


def is_distributed() -> bool:
    """True under a launcher that started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank; before the group is joined, what torchrun put in RANK."""
    if initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    """Rank 0 writes files and logs to MLflow; the others only train."""
    return rank() == 0


def init_distributed(device: torch.device) -> None:
    """Join the process group started by ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    if is_distributed() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())


def _local(host: str) -> bool:
    import socket

    names = {"localhost", "127.0.0.1", "::1", "0.0.0.0", socket.gethostname(), socket.getfqdn()}
    return host in names


def check_endpoint(endpoint: str, timeout: float) -> None:
    """Another node's rendezvous must answer: wait ``timeout`` s, then one line, exit 2."""
    import socket
    import time

    host, port = endpoint.rsplit(":", 1)
    if _local(host):
        return  # this node hosts the rendezvous
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ParamsError(
                    f"compute.rdzv_endpoint = {endpoint} does not answer after {timeout:g} s "
                    f"({exc.strerror or exc}); start the first node there or fix the address"
                ) from None
            time.sleep(1)


def rdzv_id(compute: Any, stage: str, params_file: str | Path) -> str:
    """The rendezvous of one stage of one experiment: ``compute.rdzv_id`` when set, else a hash
    of the stage, the params and the DVC experiment, so that two queued experiments never join
    one rendezvous while every node of one stage (same command, same params) does."""
    if compute.rdzv_id:
        return str(compute.rdzv_id)
    h = hashlib.sha256(Path(params_file).read_bytes())
    h.update(f"|{stage}|{os.environ.get('DVC_EXP_NAME', '')}".encode())
    return f"kdflow-{stage.replace('@', '-')}-{h.hexdigest()[:12]}"


def launch(compute: Any, stage: str, params_file: str | Path) -> None:
    """Run this stage on ``compute.nproc_per_node`` x ``nnodes`` processes: re-execute it
    under torch.distributed.run (PyTorch's elastic launcher) unless already launched. Ranks
    see the same command line; global rank 0 writes and logs. Another node runs the very same
    command (docs/scaling.md); the nodes must share the repository's filesystem (checked).

    ``compute.threads`` sets each process's CPU threads: a share of the cores when several
    experiments run at once. It is a param because the thread count changes CPU results."""
    if compute.threads is not None:
        torch.set_num_threads(compute.threads)
    if compute.nproc_per_node * compute.nnodes <= 1 or "LOCAL_RANK" in os.environ:
        return
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run"]
    cmd += [f"--nproc_per_node={compute.nproc_per_node}", f"--nnodes={compute.nnodes}"]
    if compute.rdzv_endpoint:
        check_endpoint(compute.rdzv_endpoint, compute.rdzv_timeout)
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={compute.rdzv_endpoint}"]
        cmd += [f"--rdzv_id={rdzv_id(compute, stage, params_file)}"]
    else:
        cmd += ["--standalone"]
    env = dict(os.environ)
    if compute.threads is not None:
        env["OMP_NUM_THREADS"] = str(compute.threads)
    elif "OMP_NUM_THREADS" not in env:  # share the cores (torchrun would say 1, with a warning)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // compute.nproc_per_node))
    raise SystemExit(subprocess.call([*cmd, *sys.argv], env=env))


def multi_node() -> bool:
    """More processes in the job than on this node (torchrun's view)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def require_shared(folder: Path) -> None:
    """Several nodes must see one filesystem: global rank 0 writes the outputs and the resume
    checkpoints that every node reads. Rank 0 writes a token under ``folder``; each rank must
    read it back, else every rank stops with one line."""
    if not (initialized() and multi_node()):
        return
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".kdflow-shared"
    token = [secrets.token_hex(8) if is_main() else None]
    if is_main():
        probe.write_text(token[0])
    dist.broadcast_object_list(token, src=0)
    try:
        seen = probe.read_text() == token[0]
    except OSError:
        seen = False
    ok = torch.tensor([1.0 if seen else 0.0])
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    barrier()
    if is_main():
        probe.unlink(missing_ok=True)
    if not ok.item():
        raise ParamsError(
            f"compute.nnodes > 1 needs one filesystem shared by every node: {folder.resolve()} "
            "written by the first node is not there on another; run from a shared folder "
            "(NFS or similar) on every node"
        )


def barrier() -> None:
    if initialized():
        dist.barrier()


def all_reduce_(t: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """Sum (or average) ``t`` over ranks in place; a no-op in one process."""
    if initialized():
        dist.all_reduce(t)
        if mean:
            t /= dist.get_world_size()
    return t


def tune_backends(device: torch.device) -> None:
    """On CUDA speed wins: cuDNN picks the fastest kernels, which may vary run to run."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
