"""torch.distributed plumbing for `torchrun ... -m avcil extract|train`: one process group per run, started from the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

- `start()` joins the group when WORLD_SIZE > 1 (gloo on CPU, nccl for the gradients on CUDA, and always a gloo
  group beside it for the small control messages: barriers, counts, agreements) and returns the `Group`; without
  torchrun it returns the single-process group and nothing is initialised, so one process behaves as before.
- `current()` is the group training code reads (the learner, the readout fit, the protocol).
- A peer that dies surfaces as `StageFailed` naming this rank and what it was doing: a collective fails at once
  when the peer's sockets close, or after the group timeout (AVCIL_DIST_TIMEOUT seconds, default 1800: a rank can
  wait that long at the end of extraction for a slower one); and torchrun's SIGTERM to the survivors becomes the
  same error, so that the extraction writer commits what it holds before the process ends.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
import pickle
import re
import signal
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from avcil.errors import StageFailed

DEFAULT_TIMEOUT_S = 1800.0


@dataclass
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: object | None = field(default=None, repr=False)  # the gloo process group of the control messages
    rerun: str = "rerun the same command"  # what the user can do after a failure, said in the error
    # What the rank is doing, outermost first (`guard`s within guards): "training step 1", "validation".
    doing: list[str] = field(default_factory=list, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def part(self, items: Sequence) -> Sequence:
        """This rank's share of `items`: every world-th one from its rank on (deterministic, balanced)."""
        return items[self.rank::self.world]

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turns a collective that fails (a peer died or timed out) into StageFailed naming this rank and `what`,
        after what the guards around this one name: "during training step 1, validation", whichever collective of
        the step noticed."""
        self.doing.append(what)
        try:
            yield
        except StageFailed:  # already said (an inner collective, torchrun's SIGTERM)
            raise
        except RuntimeError as e:  # DistBackendError, DistNetworkError and gloo's plain RuntimeError alike
            if not self.active or not _is_peer_failure(e):
                raise
            raise StageFailed(f"rank {self.rank} of {self.world}: lost another rank during {', '.join(self.doing)} "
                              f"({_first_line(e)}); {self.rerun}") from e
        finally:
            self.doing.pop()

    def _collective(self, what: str, fn):
        with self.guard(what):
            return fn()

    def barrier(self, what: str) -> None:
        if self.active:
            self._collective(what, lambda: dist.barrier(group=self.control))

    def sum(self, values: Sequence[float], what: str) -> list[float]:
        """Element-wise sums of `values` over the ranks, in float64."""
        if not self.active:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64)
        self._collective(what, lambda: dist.all_reduce(tensor, group=self.control))
        return tensor.tolist()

    def sum_tensors(self, tensors: Sequence[torch.Tensor], what: str) -> None:
        """Sums tensors over the ranks in place (on the control group, from the CPU: sufficient statistics are small
        and a readout fit runs once per step)."""
        if not self.active:
            return
        for tensor in tensors:
            host = tensor.detach().to("cpu", torch.float64)
            self._collective(what, lambda: dist.all_reduce(host, group=self.control))
            tensor.copy_(host.to(tensor.dtype))

    def from_main(self, value, what: str):
        """Rank 0's `value` on every rank."""
        if not self.active:
            return value
        box = [value]
        self._collective(what, lambda: dist.broadcast_object_list(box, src=0, group=self.control))
        return box[0]

    def gather(self, value, what: str) -> list:
        """Every rank's (picklable) `value`, in rank order, on every rank."""
        if not self.active:
            return [value]
        values = [None] * self.world
        self._collective(what, lambda: dist.all_gather_object(values, value, group=self.control))
        return values

    def agree(self, value, what: str) -> None:
        """Fails with a clear error unless every rank holds the same (picklable) `value`."""
        if self.active and self.from_main(pickle.dumps(value), what) != pickle.dumps(value):
            raise StageFailed(f"rank {self.rank} of {self.world}: {what} differs from rank 0's; the ranks must see "
                              f"the same data and settings")

    @contextlib.contextmanager
    def main_first(self, what: str) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds a cache), then the others, which then find it done."""
        if not self.is_main:
            self.barrier(f"waiting for rank 0 to {what}")
        yield
        if self.is_main:
            self.barrier(f"waiting for rank 0 to {what}")

    def device(self, requested: str) -> str:
        """'cuda' means this process's own GPU (LOCAL_RANK) under torchrun."""
        return f"cuda:{self.local_rank}" if self.active and requested == "cuda" else requested


_SINGLE = Group()
_current = _SINGLE


def current() -> Group:
    return _current


def _is_peer_failure(error: RuntimeError) -> bool:
    text = str(error).lower()
    return isinstance(error, dist.DistError) or any(
        word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket"))


def data_parallel(module: torch.nn.Module, group: Group) -> torch.nn.Module:
    """`module` under DistributedDataParallel when the group spans processes, else itself. Buffers are not
    broadcast at every forward: the readout's (a 2048² Gram matrix) are not trained, and the ranks keep them equal."""
    if not group.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    on_gpu = next(module.parameters()).device.type == "cuda"
    # torch 2.13 renamed the per-forward buffer sync and warns on the old name; both leave the sync at start.
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
        DistributedDataParallel).parameters else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=[group.local_rank] if on_gpu else None, **no_sync)


def _first_line(error: BaseException) -> str:
    """The gist of a backend's message: '[.../pair.cc:553] Connection closed by peer [10.0.0.2]:20873. This is ...'
    -> 'Connection closed by peer [10.0.0.2]:20873'."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", line).split(". ")[0][:300]


def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("AVCIL_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))


def start(device: str = "cpu", rerun: str = "rerun the same command") -> Group:
    """Join torchrun's process group (once per process) and return it; the single-process group without torchrun.
    `rerun`: what the errors after a failure tell the user to do."""
    global _current
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or _current.active:
        return _current
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timeout())
        control = dist.new_group(backend="gloo", timeout=timeout()) if on_gpu else dist.group.WORLD
    except (RuntimeError, ValueError, dist.DistError) as e:
        raise StageFailed(f"rank {rank} of {world}: could not join the process group at "
                          f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
                          f"({_first_line(e)})") from e
    _current = Group(rank, world, local_rank, control, rerun)
    signal.signal(signal.SIGTERM, _stopped_by_torchrun)
    return _current


def _stopped_by_torchrun(signum, frame) -> None:
    # torchrun ends the surviving workers with SIGTERM when one fails; raising here unwinds the command (the
    # extraction writer commits its chunk) and the command line prints this one line.
    raise StageFailed(f"rank {_current.rank} of {_current.world}: stopped by torchrun because another rank failed "
                      f"(torchrun's report names it); {_current.rerun}")


def stop() -> None:
    global _current
    if _current.active and dist.is_initialized():
        dist.destroy_process_group()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _current = _SINGLE
