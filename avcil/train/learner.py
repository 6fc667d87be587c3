"""The one training loop. A step learns new classes from their clips plus exemplars of the old ones, with the
head of the previous step as a frozen teacher; the method decides which loss terms apply.

Used the same way by the benchmark protocol (1 step or 10) and by field learning on the device.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler
from tqdm import tqdm

from avcil.errors import InvalidInput
from avcil.data.clips import ClipSet
from avcil.model.head import FusionHead
from avcil.model.losses import LossInputs
from avcil.model.memory import ExemplarMemory
from avcil.train import distributed
from avcil.train.config import TrainConfig  # noqa: F401 (the loop's settings; callers import it from here too)
from avcil.train.distributed import Group
from avcil.train.precision import compute_dtype
from avcil.train.methods import Method


@dataclass
class StepReport:
    best_epoch: int
    best_val_accuracy: float | None
    seconds: float
    clips_per_second: float
    loss_history: list[dict] = field(default_factory=list)


class _Batches(Dataset):
    """Loads a whole batch of clips per item, so that a store reads them in one call. Rows are (clip set, position)
    pairs over one or more clip sets; the second one's clips are exemplars (the 'mixed' batch policy)."""

    def __init__(self, sources: Sequence[ClipSet], rows: Sequence[tuple[int, int]]):
        self.sources, self.rows = list(sources), np.asarray(rows, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, batch: list[int]):
        chosen = self.rows[batch]
        audio, visual, labels, exemplar = [], [], [], []
        for source in np.unique(chosen[:, 0]):
            positions = chosen[chosen[:, 0] == source, 1]
            a, v = self.sources[source].load(positions)
            audio.append(a)
            visual.append(v)
            labels.append(self.sources[source].labels[positions])
            exemplar.append(np.full(len(positions), source > 0))
        return (torch.from_numpy(np.concatenate(audio)), torch.from_numpy(np.concatenate(visual)),
                torch.from_numpy(np.concatenate(labels)), torch.from_numpy(np.concatenate(exemplar)))


class _ShareOfBatches(Sampler):
    """This rank's share of every batch: the batches are those one process draws (the same generator seed on every
    rank), each dealt out over the ranks, so that DDP's averaged gradient is that of the whole batch. A batch smaller
    than the world goes whole to every rank (the average of equal gradients is that gradient)."""

    def __init__(self, batches: BatchSampler, group: Group):
        self.batches, self.group = batches, group

    def __iter__(self):
        for batch in self.batches:
            yield batch if len(batch) < self.group.world else batch[self.group.rank::self.group.world]

    def __len__(self) -> int:
        return len(self.batches)


def batches(clips: ClipSet, indices: Sequence[int], batch_size: int, shuffle: bool, seed: int,
            num_workers: int = 0, extra: ClipSet | None = None, group: Group | None = None) -> DataLoader:
    """Batches of (audio, visual, labels, is_exemplar) over `indices` of `clips`, and over all of `extra` (the
    exemplars mixed in) where given; under torchrun (`group`) this rank's share of each."""
    rows = [(0, int(i)) for i in indices] + ([(1, i) for i in range(len(extra.labels))] if extra is not None else [])
    data = _Batches([clips] + ([extra] if extra is not None else []), rows)
    generator = torch.Generator().manual_seed(seed)
    base = RandomSampler(data, generator=generator) if shuffle else range(len(data))
    sampler = BatchSampler(base, batch_size, drop_last=False)
    return DataLoader(data, sampler=_ShareOfBatches(sampler, group) if group is not None and group.active else sampler,
                      batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)


def _cycle(loader: DataLoader) -> Iterator:
    # Re-iterating reshuffles: each pass over the memory is a new order.
    return itertools.chain.from_iterable(itertools.repeat(loader))


@torch.no_grad()
def predict_logits(head: FusionHead, clips: ClipSet, indices: Sequence[int], config: TrainConfig,
                   what: str = "logits") -> np.ndarray:
    """Head outputs (`logits` or `fused` features) for the given clips, in order."""
    head.eval()
    rows = []
    for audio, visual, _, _ in batches(clips, indices, config.eval_batch_size, False, 0, config.num_workers):
        out = head(audio.to(config.device), visual.to(config.device))
        rows.append(getattr(out, what).float().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, head.num_classes), np.float32)


def predict(head: FusionHead, clips: ClipSet, indices: Sequence[int], config: TrainConfig,
            what: str = "logits") -> np.ndarray:
    """Decided classes (`logits`: the readout where the head has one; `train_logits`: its linear classifier)."""
    return predict_logits(head, clips, indices, config, what).argmax(axis=1)


def accuracy(head: FusionHead, clips: ClipSet, indices: Sequence[int], config: TrainConfig,
             what: str = "logits", group: Group | None = None) -> float:
    """Under torchrun (`group`) each rank predicts its share and the counts are summed: every rank gets the same."""
    indices = np.asarray(indices)
    if group is None or not group.active:
        return float((predict(head, clips, indices, config, what) == clips.labels[indices]).mean())
    mine = np.asarray(group.part(indices))
    correct = float((predict(head, clips, mine, config, what) == clips.labels[mine]).sum())
    correct, total = group.sum([correct, len(mine)], "validation")
    return correct / total


@torch.no_grad()
def fit_readout(head: FusionHead, spec: dict, clips: ClipSet, indices: Sequence[int], config: TrainConfig,
                fresh: bool = False) -> None:
    """Add these clips (labels = class indices) to the head's readout and solve it; `fresh` (or no readout yet)
    starts one of `spec`'s settings from empty. Clips with NaN or Inf features are refused, by id, before any is
    added. Under torchrun each rank reads its share of the clips and the readout's sums are added over the ranks."""
    group = distributed.current()
    indices = np.asarray(group.part(np.asarray(indices, dtype=np.int64)))
    loader = batches(clips, indices, config.eval_batch_size, False, 0, config.num_workers)
    inputs, labels, done = [], [], 0
    head.to(config.device).eval()
    if fresh or head.readout is None:
        head.set_readout(spec)
    for audio, visual, batch_labels, _ in loader:
        finite = (torch.isfinite(audio).all(dim=1) & torch.isfinite(visual).flatten(1).all(dim=1)).numpy()
        if not finite.all():
            names = [clips.ids[i] for i in indices[done:done + len(finite)][~finite]]
            raise InvalidInput(f"features of clip(s) {', '.join(names[:5])} hold NaN or Inf; re-extract them")
        done += len(finite)
        audio, visual = audio.to(config.device), visual.to(config.device)
        inputs.append(head.readout_inputs(audio, visual))
        labels.append(batch_labels.to(config.device))
    if group.active:
        x = torch.cat(inputs) if inputs else torch.zeros((0, head.readout.in_dim), device=config.device)
        y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=config.device)
        _accumulate_over_ranks(head.readout, x, y, group)
    elif inputs:
        head.readout.accumulate(torch.cat(inputs), torch.cat(labels))
    head.readout.solve()


def _accumulate_over_ranks(readout, x: torch.Tensor, labels: torch.Tensor, group: Group) -> None:
    """`readout.accumulate` over the clips of every rank: the standardisation from the moments of all of them, then
    the sums (Gram, cross, counts; or class sums) of each rank's clips added over the ranks."""
    if hasattr(readout, "standardise") and not bool(readout.standardised):
        x64 = x.double()
        moments = [torch.tensor([float(len(x))], dtype=torch.float64), x64.sum(dim=0), (x64 ** 2).sum(dim=0)]
        group.sum_tensors(moments, "the readout's standardisation")
        n, total, squares = float(moments[0]), moments[1], moments[2]
        if n > 1:
            mean = total / n
            readout.standardise(mean, ((squares - n * mean ** 2).clamp_min(0) / (n - 1)).sqrt())
    increments = readout.increments(x, labels)
    group.sum_tensors(list(increments.values()), "the readout's sufficient statistics")
    readout.add(increments)


class Learner:
    def __init__(self, method: Method, config: TrainConfig, progress: bool = True):
        self.method = method
        self.config = config
        self.progress = progress

    def learn_step(self, head: FusionHead, teacher: FusionHead | None, old_task_ranges: list[tuple[int, int]],
                   train: ClipSet, train_indices: Sequence[int], memory: ExemplarMemory | None,
                   val: ClipSet | None = None, val_indices: Sequence[int] | None = None,
                   step_name: str = "step") -> StepReport:
        """Train `head` in place on the new clips (+ exemplars) with the method's terms for this step (step =
        the number of earlier tasks); keep the epoch with the best validation accuracy over all seen classes (the
        last epoch when there is no validation set). A step at which none of the method's terms applies trains
        nothing (a closed-form method past its base step)."""
        cfg = self.config
        terms = self.method.terms_at(len(old_task_ranges))
        if not terms:
            return StepReport(best_epoch=-1, best_val_accuracy=None, seconds=0.0, clips_per_second=0.0)
        head.require_fusion(f"gradient training ({', '.join(t.name for t in terms)})")
        torch.manual_seed(cfg.seed)
        group = distributed.current()
        head.to(cfg.device)
        model = distributed.data_parallel(head, group)  # the head itself in one process
        run_teacher, old_classifier = _frozen_teacher(teacher, terms, cfg.device)
        dtype = compute_dtype(cfg.precision, cfg.device)
        autocast = torch.autocast(torch.device(cfg.device).type, dtype=dtype, enabled=dtype != torch.float32)
        optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        new_loader, exemplar_stream = self._loaders(train, train_indices, memory, group)
        best = (-1.0, 0, copy.deepcopy(head.state_dict()))
        history, clips_seen, start = [], 0, time.perf_counter()
        bar = tqdm(range(cfg.epochs), desc=step_name, disable=not self.progress, leave=False, unit="epoch")
        for epoch in bar:
            model.train()
            sums: dict[str, float] = {}
            for batch in new_loader:
                audio, visual, labels, is_exemplar = _with_exemplars(batch, exemplar_stream, cfg.device)
                with autocast:
                    out = model(audio, visual).for_losses()
                    old = None
                    if run_teacher:
                        with torch.no_grad():
                            old = teacher(audio, visual).for_losses()
                inputs = LossInputs(out, old, labels, is_exemplar, old_task_ranges, old_classifier)
                parts = {t.name: t.weight * t(inputs) for t in terms}
                loss = sum(parts.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                clips_seen += len(labels)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            # Judged by the linear classifier being trained: a readout is refitted only after the step.
            val_acc = (accuracy(head, val, val_indices, cfg, "train_logits", group)
                       if val is not None and len(val_indices) else None)
            history.append({"epoch": epoch, "val_accuracy": val_acc, **sums})
            score = val_acc if val_acc is not None else float(epoch)  # no validation: keep the last epoch
            if score > best[0]:
                best = (score, epoch, copy.deepcopy(head.state_dict()))
            bar.set_postfix(loss=f"{sum(sums.values()):.3f}", val=f"{val_acc:.3f}" if val_acc is not None else "-")
        head.load_state_dict(best[2])
        seconds = time.perf_counter() - start
        clips_seen = group.sum([clips_seen], "the end of a step")[0]  # every rank's clips: the run's throughput
        return StepReport(best[1], best[0] if val is not None else None, seconds,
                          clips_per_second=clips_seen / seconds if seconds else 0.0, loss_history=history)

    def _loaders(self, train: ClipSet, train_indices: Sequence[int], memory: ExemplarMemory | None,
                 group: Group) -> tuple:
        """The new clips' batches (with the exemplars mixed in, for a "mixed" method) and, otherwise, an endless
        stream of exemplar batches to append to each (None without a memory)."""
        cfg = self.config
        exemplars = memory.as_clip_set() if memory is not None else None
        mixed = exemplars is not None and self.method.batch == "mixed"
        new_loader = batches(train, train_indices, cfg.batch_size, True, cfg.seed, cfg.num_workers,
                             extra=exemplars if mixed else None, group=group)
        exemplar_stream = None
        if exemplars is not None and not mixed:
            exemplar_stream = _cycle(batches(exemplars, range(len(exemplars.labels)), cfg.exemplar_batch_size,
                                             True, cfg.seed + 1, group=group))
        return new_loader, exemplar_stream


def _frozen_teacher(teacher: FusionHead | None, terms, device) -> tuple[bool, torch.Tensor | None]:
    """Freeze the previous step's head on `device`; (whether a term needs its outputs, its classifier's weights)."""
    if teacher is None:
        return False, None
    teacher.to(device).eval()
    teacher.requires_grad_(False)
    return any(getattr(t, "uses_teacher", False) for t in terms), teacher.classifier.weight.detach()


def _with_exemplars(batch: tuple, exemplar_stream, device) -> tuple:
    """(audio, visual, labels, is_exemplar) of a batch of new clips, the next exemplar batch appended, on `device`."""
    audio, visual, labels, is_exemplar = batch
    if exemplar_stream is not None:
        ex_audio, ex_visual, ex_labels, _ = next(exemplar_stream)
        audio, visual = torch.cat([audio, ex_audio]), torch.cat([visual, ex_visual])
        labels = torch.cat([labels, ex_labels])
        is_exemplar = torch.cat([is_exemplar, torch.ones(len(ex_labels), dtype=torch.bool)])
    return audio.to(device), visual.to(device), labels.to(device), is_exemplar.to(device)
