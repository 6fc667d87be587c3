"""`avcil extract`: videos -> encoder features in a feature store, resumable.

Videos are listed by either
- a folder with one subfolder per class (the subfolder name is the label; videos anywhere below it; every clip in
  the 'train' split), or
- a CSV with columns path,label,split (paths relative to the CSV's folder, or absolute).
A clip's id is its path as listed (relative to the folder or as written in the CSV). Clips already in the store are
skipped, so rerunning the same command resumes. A file that fails to decode is logged, skipped and summarised at the
end (and in STORE/failures.json); it never stops the run. Decoding and preprocessing run in threads ahead of the
encoders, which see one batch per forward pass.

Under torchrun (`torchrun --nproc-per-node N -m avcil extract ...`, on one machine or many) rank 0 lists the clips
the store lacks and deals them out; each rank writes its own shard of the store (avcil/data/store.py) and rank 0
merges the shards' indexes at the end, and first at every rerun, which therefore resumes whatever stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from avcil.errors import InvalidInput, StageFailed
from avcil.data.clips import SPLITS
from avcil.data.decode import MISSING_AUDIO_POLICIES
from avcil.data.store import FeatureStoreWriter, merge_shards, shard_root, stored_ids, write_json
from avcil.export.cached import BACKENDS, use_onnxruntime
from avcil.features import Features
from avcil.fileio import default_cache
from avcil.model.encoders import PROFILES, EncoderProfile, load_profile
from avcil.model.encoders.pipeline import pipelined
from avcil.train import distributed
from avcil.train.distributed import Group

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts"}
FAILURES_FILE = "failures.json"
# A partly filled chunk is committed at least this often, so that an interrupted slow run loses little work.
FLUSH_EVERY_SECONDS = 120.0
# Under torchrun each rank reports its counts in its shard this often, for rank 0's progress bar.
PROGRESS_FILE = "progress.json"
PROGRESS_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class ClipEntry:
    clip_id: str
    path: Path
    label: str
    split: str


def _clips_in_folder(root: Path) -> list[ClipEntry]:
    entries = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
                entries.append(ClipEntry(path.relative_to(root).as_posix(), path, class_dir.name, "train"))
    if not entries:
        raise InvalidInput(f"{root}: no videos found; expected one subfolder per class holding video files "
                         f"({', '.join(sorted(VIDEO_SUFFIXES))})")
    return entries


def _clips_in_csv(table: Path) -> list[ClipEntry]:
    with open(table, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label", "split"} - set(reader.fieldnames or [])
        if missing:
            raise InvalidInput(f"{table}: missing column(s) {sorted(missing)}; expected a header path,label,split")
        entries = []
        for line, row in enumerate(reader, start=2):
            if row["split"] not in SPLITS:
                raise InvalidInput(f"{table}:{line}: split {row['split']!r}, expected one of {SPLITS}")
            if not row["path"] or not row["label"]:
                raise InvalidInput(f"{table}:{line}: empty path or label")
            path = Path(row["path"])
            entries.append(ClipEntry(row["path"], path if path.is_absolute() else table.parent / path, row["label"],
                                     row["split"]))
    ids = [e.clip_id for e in entries]
    if len(set(ids)) != len(ids):
        raise InvalidInput(f"{table}: a path is listed more than once")
    return entries


def list_clips(videos: str | Path) -> list[ClipEntry]:
    """The clips of a class-per-subfolder directory or of a path,label,split CSV."""
    videos = Path(videos)
    if videos.is_dir():
        return _clips_in_folder(videos)
    if videos.is_file() and videos.suffix.lower() == ".csv":
        return _clips_in_csv(videos)
    raise InvalidInput(f"{videos}: expected a folder of class subfolders or a .csv with columns path,label,split")


@dataclass
class Prepared:
    entry: ClipEntry
    audio: np.ndarray | None = None  # profile inputs, or None and `error` when the clip failed
    visual: np.ndarray | None = None
    error: str | None = None
    silent_fallback: bool = False


def _prepare(entry: ClipEntry, profile: EncoderProfile, missing_audio: str) -> Prepared:
    try:
        audio, visual, silent = profile.file_inputs(entry.path, missing_audio)
        return Prepared(entry, audio, visual, silent_fallback=silent)
    except Exception as error:  # noqa: BLE001 - one bad file must not end the run; the reason is recorded
        return Prepared(entry, error=f"{type(error).__name__}: {error}")


def _encode(batch: list[Prepared], profile: EncoderProfile) -> tuple[list[Prepared], np.ndarray | None,
                                                                     np.ndarray | None]:
    """One encoder forward for the clips of `batch` that decoded: (the batch, their audio and visual features)."""
    good = [p for p in batch if p.error is None]
    if not good:
        return batch, None, None
    return batch, *profile.encode_batch(np.stack([p.audio for p in good]), np.stack([p.visual for p in good]))


def _store(encoded: tuple[list[Prepared], np.ndarray | None, np.ndarray | None], writer: FeatureStoreWriter,
           summary: dict) -> None:
    """The features of a batch's clips into the store; the clips that failed to decode are recorded as failures."""
    batch, audio, visual = encoded
    for bad in batch:
        if bad.error is not None:
            summary["failures"][bad.entry.clip_id] = bad.error
            log.warning("skipped %s", bad.error)
    good = [p for p in batch if p.error is None]
    if audio is None:
        return
    for p, a, v in zip(good, audio, visual):
        writer.add(p.entry.clip_id, p.entry.label, p.entry.split, Features(audio=a, visual=v))
    summary["silent_audio"] += [p.entry.clip_id for p in good if p.silent_fallback]
    summary["extracted_ids"] += [p.entry.clip_id for p in good]
    summary["extracted"] += len(good)


def extract(videos: str | Path, out: str | Path, profile_name: str = "lite", *, profile: EncoderProfile | None = None,
            batch_size: int | None = None, workers: int = 2, threads: int | None = None, device: str | None = None,
            missing_audio: str = "error", limit: int | None = None, progress: bool = True, group: Group | None = None,
            backend: str = "auto", **profile_options) -> dict:
    """Extract the features of every clip under `videos` not yet in the store `out`; return a summary.

    `profile` (an already loaded EncoderProfile) takes precedence over `profile_name` + `profile_options`
    (e.g. audiomae=..., videomae=..., random_init=True). `threads`: torch threads (default: torch's own, one per
    core); `device`: move the encoders there first ('cpu', 'cuda'; default: leave them where they are);
    `batch_size`: clips per forward pass (default: 2 on a CPU, where larger batches of 224² frames run slower per
    frame, 16 on a GPU); `workers`: decoding threads; `missing_audio`: 'error' or 'silence' (see avcil.data.decode);
    `backend`: what runs the encoders, 'auto' (ONNX Runtime on a CPU where the profile's export is cheap, see
    avcil.export.cached), 'onnxruntime' or 'torch'; `limit`: extract at most this many new clips. The summary holds
    counts, `failures` {clip id: reason}, `silent_audio` (clips encoded with silence), `clips_per_second` and
    `feature_bytes_per_clip_fp16`.

    `group` (from avcil.train.distributed.start, under torchrun): every rank calls this alike; rank 0 lists the
    clips still missing and deals them out, each rank extracts its share into its own shard store, rank 0 merges
    the shards into `out` and every rank returns the summary of all of them.
    """
    if missing_audio not in MISSING_AUDIO_POLICIES:
        raise InvalidInput(f"missing_audio must be one of {MISSING_AUDIO_POLICIES}, got {missing_audio!r}")
    group = group or Group()
    entries = list_clips(videos) if group.is_main else None
    if threads:
        torch.set_num_threads(threads)
    if profile is None:
        profile = load_profile(profile_name, **profile_options)
    if device:
        profile.to(device)
    use_onnxruntime(profile, default_cache(), str(next(profile.visual.parameters()).device), backend)
    if batch_size is None:
        batch_size = profile.bulk_batch_size
    out = Path(out)
    started = time.perf_counter()
    listed, done, todo = group.from_main(_missing(entries, out, profile, limit, group) if group.is_main else None,
                                         "listing the clips")
    mine = group.part(todo)
    summary = {"store": str(out), "profile": profile.name, "clips_listed": listed, "already_done": done,
               "extracted": 0, "failed": 0, "failures": {}, "silent_audio": [], "extracted_ids": [], "processed": 0}
    shard = shard_root(out, group.rank, group.world) if group.active else out
    with FeatureStoreWriter(shard, profile.shape, profile.describe()) as writer:
        _report_progress(shard, group, summary)  # replaces what an earlier run left, before rank 0 reads it
        bar = tqdm(total=len(todo), unit="clip", desc=f"extract {profile.name}" + (
            f" ({group.world} processes)" if group.active else ""), disable=not (progress and group.is_main),
                   file=sys.stderr)
        _extract_share(mine, profile, missing_audio, workers, batch_size, writer, (out, shard, group), summary, bar)
        bar.close()
    if group.active:
        _report_progress(shard, group, summary)
        summary = _merge(out, group, summary)
    seconds = time.perf_counter() - started
    if group.is_main:
        write_json(out / FAILURES_FILE, {"failures": summary["failures"], "silent_audio": summary["silent_audio"]})
    return _final_summary(summary, seconds, profile, group)


def _extract_share(mine: list[ClipEntry], profile: EncoderProfile, missing_audio: str, workers: int,
                   batch_size: int, writer: FeatureStoreWriter, where: tuple[Path, Path, Group], summary: dict,
                   bar) -> None:
    """Decode this rank's clips on `workers` threads, a few batches ahead, and encode and store them batch by batch;
    the store is flushed and the progress reported every so often (`where`: the store, this rank's shard, the
    group)."""
    out, shard, group = where
    last_flush = last_report = time.perf_counter()
    # In ONNX Runtime one single-threaded call per core at a time (the profile's `concurrent_calls`); torch runs one
    # call at a time on all of them.
    for encoded in pipelined(mine, lambda e: [_prepare(e, profile, missing_audio)], lambda b: _encode(b, profile),
                             batch_size, workers, profile.concurrent_calls):
        batch = encoded[0]
        _store(encoded, writer, summary)
        if time.perf_counter() - last_flush > FLUSH_EVERY_SECONDS:
            writer.flush()
            last_flush = time.perf_counter()
        summary["processed"] += len(batch)
        if time.perf_counter() - last_report > PROGRESS_EVERY_SECONDS:
            _report_progress(shard, group, summary)
            last_report = time.perf_counter()
        bar.update(max(0, _all_processed(out, group, summary) - bar.n))
        bar.set_postfix(failed=len(summary["failures"]), refresh=False)


def _final_summary(summary: dict, seconds: float, profile: EncoderProfile, group: Group) -> dict:
    """The summary as returned: the bookkeeping keys dropped, the rates and sizes added."""
    for internal in ("extracted_ids", "processed"):
        summary.pop(internal)
    summary.update(failed=len(summary["failures"]), seconds=round(seconds, 3),
                   clips_per_second=round(summary["extracted"] / seconds, 3), processes=group.world,
                   feature_bytes_per_clip_fp16=2 * (profile.shape.audio_dim + int(np.prod(profile.shape.visual))))
    return summary


def _missing(entries: list[ClipEntry], out: Path, profile: EncoderProfile, limit: int | None,
             group: Group) -> tuple[int, int, list[ClipEntry]]:
    """How many clips are listed, how many of them the store holds, and which it lacks (at most `limit` of them).
    Under torchrun (rank 0) the
    store is created first and what earlier runs left in shards is merged, so that the work is dealt out afresh."""
    FeatureStoreWriter(out, profile.shape, profile.describe()).close()  # creates the store, or checks its profile
    if group.active:
        merge_shards(out)
    done = stored_ids(out)
    missing = [e for e in entries if e.clip_id not in done]
    return len(entries), len(entries) - len(missing), missing[:limit]


def _report_progress(shard: Path, group: Group, summary: dict) -> None:
    if group.active:
        write_json(shard / PROGRESS_FILE, {k: summary[k] for k in ("processed", "extracted")})


def _all_processed(out: Path, group: Group, summary: dict) -> int:
    """Clips done by every rank so far, as rank 0 sees them: its own count and the others' progress files."""
    if not (group.active and group.is_main):
        return summary["processed"]
    others = 0
    for rank in range(1, group.world):
        try:
            others += json.loads((shard_root(out, rank, group.world) / PROGRESS_FILE).read_text()).get("processed", 0)
        except (OSError, ValueError):  # not written yet, or being replaced
            pass
    return summary["processed"] + others


def _merge(out: Path, group: Group, mine: dict) -> dict:
    """After every rank has committed its shard: rank 0 links the shards into the store and checks that it holds
    every clip the ranks report extracted; every rank gets the summary of all of them."""
    group.barrier("the end of extraction (waiting for every rank to commit its shard)")
    summaries = group.gather(mine, "collecting the ranks' summaries")
    total = None
    if group.is_main:
        merge_shards(out)
        missing = {i for s in summaries for i in s["extracted_ids"]} - stored_ids(out)
        if missing:
            raise StageFailed(f"{out}: rank 0 does not see {len(missing)} clip(s) the other ranks committed (is the "
                              f"store on a file system every machine shares?); rerun to merge them")
        total = {**mine, "extracted": sum(s["extracted"] for s in summaries),
                 "failures": {k: v for s in summaries for k, v in s["failures"].items()},
                 "silent_audio": sorted(i for s in summaries for i in s["silent_audio"])}
    return group.from_main(total, "sharing the summary")


def _summary_lines(summary: dict) -> list[str]:
    lines = [f"{summary['store']}: {summary['extracted']} clips extracted ({summary['clips_per_second']} clips/s), "
             f"{summary['already_done']} already there, {summary['failed']} failed, of {summary['clips_listed']} "
             f"listed"]
    if summary["silent_audio"]:
        lines.append(f"{len(summary['silent_audio'])} clips had no audio track and were encoded with silence")
    for clip_id, reason in sorted(summary["failures"].items()):
        lines.append(f"  failed {clip_id}: {reason}")
    if summary["failures"]:
        lines.append(f"failures are listed in {Path(summary['store']) / FAILURES_FILE}; fix or remove those files "
                     f"and rerun to add them")
    return lines


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when every listed clip is in the store, 1 when some failed."""
    options = {}
    if args.profile == "paper":
        options = {"audiomae": args.audiomae, "videomae": args.videomae, "random_init": args.random_init,
                   "trust_checkpoint": args.trust_checkpoint,
                   "sample_rate": args.sample_rate, "normalize": args.normalize}
    # Under torchrun: this rank's share of the clips.
    group = distributed.start(args.device, rerun="rerun the same command to resume: what each rank committed stays")
    try:
        summary = extract(args.videos, args.out, args.profile, batch_size=args.batch_size, workers=args.workers,
                          threads=args.threads, device=group.device(args.device), missing_audio=args.missing_audio,
                          limit=args.limit, group=group, backend=args.backend, **options)
    finally:
        distributed.stop()
    if group.is_main:
        print("\n".join(_summary_lines(summary)), file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1))
    # Under torchrun only rank 0 says so: a worker's non-zero exit makes torchrun stop the others.
    return 1 if summary["failed"] and group.is_main else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    from avcil.model.encoders import PAPER_NORMALIZE, PAPER_SAMPLE_RATE

    parser = subparsers.add_parser(
        "extract", help="encode videos into a feature store (resumable)",
        description="Encode videos with a frozen encoder profile into a feature store. Rerun to resume.")
    parser.add_argument("--profile", choices=PROFILES, default="lite")
    parser.add_argument("--videos", required=True,
                        help="a folder with one subfolder per class, or a CSV with columns path,label,split")
    parser.add_argument("--out", required=True, help="feature store folder (created, or resumed)")
    parser.add_argument("--audiomae", help="paper profile: AudioMAE ViT-B/16 checkpoint (.pth)")
    parser.add_argument("--trust-checkpoint", action="store_true", help="unpickle an AudioMAE checkpoint that holds "
                        "more than tensors in full (it can run code: only for a file you trust)")
    parser.add_argument("--videomae", help="paper profile: VideoMAE-base model folder (transformers format)")
    parser.add_argument("--random-init", action="store_true",
                        help="paper profile: random weights (speed tests only; the features mean nothing)")
    parser.add_argument("--sample-rate", type=int, default=PAPER_SAMPLE_RATE,
                        help=f"paper profile: fbank sample rate (default {PAPER_SAMPLE_RATE}, the paper's "
                             f"extraction; AudioMAE's own recipe is 16000)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=PAPER_NORMALIZE,
                        help="paper profile: AudioMAE input normalisation (default off, as the paper's extraction)")
    parser.add_argument("--missing-audio", choices=MISSING_AUDIO_POLICIES, default="error",
                        help="a video without an audio track: fail it (default) or encode silence")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="clips per encoder forward pass (default: 2 on a CPU, 16 on a GPU)")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--device", default="cpu", help="where the encoders run: cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="what runs the encoders: auto (default: ONNX Runtime on a CPU for the lite profile, "
                             "exported once into $AVCIL_CACHE/onnx and checked against torch; torch otherwise), "
                             "onnxruntime or torch")
    parser.add_argument("--limit", type=int, default=None, help="extract at most this many new clips")
    parser.add_argument("--json", help="also write the summary to this JSON file")
    parser.set_defaults(func=run)
    return parser
