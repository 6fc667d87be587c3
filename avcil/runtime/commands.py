"""The device commands: `avcil run` (live recognition), `avcil learn` (a new class in the field),
and `avcil model list|rollback|repair` (versions of a model dir).

`add_parsers(subparsers)` adds all three to the `avcil` command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from avcil.errors import InvalidInput
from avcil.backends import KINDS
from avcil.runtime.field_settings import (DEFAULT_CLIPS, DEFAULT_LOCK_WAIT_S, FIELD_METHODS, STRETCH_WINDOWS,
                                         FieldSettings)
from avcil.runtime.threads import LEARNER_NICE, LEARNER_THREADS, SPINNING_GRAPHS, RuntimeThreads
from avcil.train.precision import PRECISIONS


def check_recognition_flags(args: argparse.Namespace) -> None:
    """Refuse the recogniser's flags (add_recognition_flags) that cannot be used, before a model is loaded: an
    InvalidInput naming the flag."""
    from avcil.runtime.inputs import check_number, check_rule

    if args.hop is not None:
        check_number(args.hop, "--hop", 0, above=True)
    check_rule(args.score, args.threshold, args.smoothing, args.top_k)


def _check_run_flags(args: argparse.Namespace) -> None:
    from avcil.runtime.inputs import check_number, check_whole

    if args.audio_only and args.camera:
        raise InvalidInput("--audio-only decides without a camera: give --camera or --audio-only, not both")
    if not (args.audio_only or args.camera):
        raise InvalidInput("name the camera with --camera SRC (or decide on sound alone with --audio-only)")
    check_recognition_flags(args)
    if args.duration is not None:
        check_number(args.duration, "--duration", 0, above=True)
    check_number(args.slot, "--slot", 0)
    check_whole(args.threads, "--threads", 0)
    check_event_flags(args)


def check_event_flags(args: argparse.Namespace) -> None:
    """The event settings (add_event_flags) of `avcil run` and `avcil serve`."""
    from avcil.runtime.inputs import check_whole

    check_whole(args.event_start, "--event-start", 1)
    check_whole(args.event_end, "--event-end", 1)


def _check_learn_flags(args: argparse.Namespace) -> None:
    from avcil.runtime.inputs import check_label, check_number, check_whole

    if args.label is not None:
        check_label(args.label, "--label")
    if args.clips is not None:
        check_whole(args.clips, "--clips", 1)
    if args.minutes is not None:
        check_number(args.minutes, "--minutes", 0, above=True)
    check_whole(args.windows, "--windows", 1)
    check_number(args.countdown, "--countdown", 0)
    check_whole(args.threads, "--threads", 0)
    for flag in ("epochs", "batch_size", "exemplar_batch_size"):
        if getattr(args, flag) is not None:
            check_whole(getattr(args, flag), "--" + flag.replace("_", "-"), 1)
    if args.instance_weight is not None:
        check_number(args.instance_weight, "--instance-weight", 0)


def _run(args: argparse.Namespace) -> int:
    from avcil.runtime.events import EventFile, EventRelay, EventTracker
    from avcil.runtime.mqtt import MqttPublisher, mqtt_target
    from avcil.runtime.recognizer import DecisionWriter, Recognizer, run_live

    _check_run_flags(args)
    target = mqtt_target(args)
    recognizer = Recognizer(args.model, args.backend, args.device, threshold=args.threshold,
                            smoothing=args.smoothing, top_k=args.top_k, score=args.score,
                            threads=RuntimeThreads(args.threads, backend=args.backend,
                                                   spinning=SPINNING_GRAPHS if args.spin else ()))
    writer = DecisionWriter(args.jsonl, None if args.quiet else sys.stdout, args.video_out,
                            video_fps=1.0 / args.hop if args.hop else 1.0)
    print(f"model {recognizer.version} ({len(recognizer.class_names)} classes), encoders on {args.backend}",
          file=sys.stderr)
    publisher = MqttPublisher(target, classes=lambda: recognizer.class_names) if target else None
    # Events are tracked once, for every outlet that takes them: the file, the broker.
    outlets = ([EventFile(args.events)] if args.events else []) + ([publisher] if publisher else [])
    events = EventRelay(EventTracker(args.event_start, args.event_end), outlets) if outlets else None
    if publisher is not None:
        publisher.start(recognizer.version)  # connects in the background: the first decision does not wait for it

    def sink(decision: dict, window) -> None:
        writer(decision, window)
        if publisher is not None:
            publisher.decision(decision)
        if events is not None:
            events(decision)
    if args.audio_only:
        print("no camera (--audio-only): deciding on sound alone, every decision marked video_missing",
              file=sys.stderr)
    try:
        summary = run_live(recognizer, args.camera, args.mic, sink, hop=args.hop, duration=args.duration,
                           loop=args.loop, slot_s=args.slot)
    except KeyboardInterrupt:
        summary = None
    finally:
        writer.close()
        if events is not None:
            events.close()  # an event still open when the run ends is closed then, and given to every outlet
        recognizer.close()
    if summary is not None:
        print(f"{summary['decisions']} decisions, {summary['dropped_windows']} windows dropped, "
              f"{len(recognizer.reloads)} model reloads", file=sys.stderr)
    return 0


def _learn(args: argparse.Namespace) -> int:
    from avcil.modeldir import ModelDir
    from avcil.runtime.field import learn_class
    from avcil.runtime.learning import learn_new_class

    _check_learn_flags(args)
    if args.nice:
        os.nice(args.nice)  # before torch starts its threads: they inherit it
    if args.threads:
        RuntimeThreads(args.threads, blas=args.threads).apply()
    if args.refine and args.method != "analytic":
        raise InvalidInput("--refine follows an analytic update with a gradient one; it goes with --method analytic")
    model = ModelDir(args.model)
    if args.background or args.not_label is not None:
        with _writer(model, args):
            return _learn_negatives(args, model)
    if not args.label:
        raise InvalidInput("name the new class with --label NAME (or add background with --background, or a "
                           "correction with --not LABEL)")
    clips = _clips(args, "name the clips of the new class")
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "exemplar_batch_size": args.exemplar_batch_size,
             "instance_weight": args.instance_weight, "precision": args.precision}
    settings = FieldSettings(**{k: v for k, v in given.items() if v is not None})
    with _writer(model, args):
        summary, audio, visual = learn_new_class(model, args.label, clips, method=args.method, settings=settings,
                                                 drop_suspect=args.drop_suspect, refine_later=args.refine)
    _report_learnt(summary, args.json)
    if args.refine:
        if args.nice < LEARNER_NICE:
            # The refinement runs beside `avcil run`: keep it out of the recognizer's way.
            os.nice(LEARNER_NICE - args.nice)
        with _writer(model, args):
            refined = learn_class(args.model, args.label, audio, visual, settings, method="avcil", refine=summary)
        refined.update(encode_seconds=summary["encode_seconds"], learn_seconds=round(refined["seconds"], 3))
        _report_learnt(refined, args.json)
    return 0


def _writer(model, args: argparse.Namespace):
    """The model dir's writer lock, waited for up to --lock-wait seconds with one line saying so: a second learner
    waits before it records or encodes anything, rather than failing after."""
    from avcil.modeldir.lock import WAITING_LINE

    return model.writer(args.lock_wait, on_wait=lambda: print(WAITING_LINE, file=sys.stderr, flush=True))


def _clips(args: argparse.Namespace, refusal: str):
    """The clips the flags name: --files, a recording from --camera and --mic of --clips clips, or (background) a
    stretch of --minutes from them."""
    from avcil.runtime.learning import Recording, Stretch

    if args.minutes is not None:
        if not args.background:
            raise InvalidInput("--minutes records a stretch of background: it goes with --background")
        if args.files or not (args.camera and args.mic):
            raise InvalidInput("--minutes records from --camera SRC and --mic SRC (not --files)")
        return Stretch(args.camera, args.mic, args.minutes * 60, args.windows)
    if args.files:
        return list(args.files)
    if args.camera and args.mic and args.clips:
        return Recording(args.camera, args.mic, args.clips, args.countdown)
    raise InvalidInput(f"{refusal}: --files F... or --camera SRC --mic SRC --clips N")


def _learn_negatives(args: argparse.Namespace, model) -> int:
    """`avcil learn --background` (windows of files or recordings that hold none of the classes) and `avcil learn
    --not LABEL` (windows the model labelled LABEL that are not it): what live windows see of each file, learnt as
    none of the classes."""
    from avcil.runtime.learning import learn_negatives

    flag = "--background" if args.background else "--not"
    if args.background and args.not_label is not None:
        raise InvalidInput("--background and --not are two different things: give one")
    if args.label or args.method != "analytic" or args.refine:
        raise InvalidInput(f"{flag} takes no --label, --method or --refine: it is an analytic update")
    if args.force and not args.background:
        raise InvalidInput("--force goes with --background (it adds files that look like a class)")
    clips = _clips(args, f"name what {flag} learns")
    summary = learn_negatives(model, clips, not_label=args.not_label, force=args.force)
    if args.background:
        line = (f"learnt background from {{sources}} source(s), {{background_windows}} windows "
                f"({{background_windows_total}} in all)")
    else:
        line = ("learnt that {sources} source(s), {windows} windows, are not {not!r}: windows like them are "
                "'unknown' from now on ({corrections_total} corrections in all)")
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        print(line.format(**summary) + f" in {summary['learn_seconds']:.2f} s after {summary['encode_seconds']:.1f} "
              f"s of encoding: {summary['parent']} -> {summary['version']}", flush=True)
    return 0


def _report_learnt(summary: dict, as_json: bool) -> None:
    if as_json:
        keys = ("version", "parent", "label", "clips", "method", "encode_seconds", "learn_seconds", "memory_clips",
                "suspect", "separation")
        print(json.dumps({k: summary[k] for k in keys if k in summary}), flush=True)
    else:
        print(f"learnt {summary['label']!r} from {summary['clips']} clips ({summary['method']}) in "
              f"{summary['learn_seconds']:.2f} s after {summary['encode_seconds']:.1f} s of encoding: "
              f"{summary['parent']} -> {summary['version']} (memory {summary['memory_clips']} clips)", flush=True)


def _model_list(args: argparse.Namespace) -> int:
    from avcil.modeldir import ModelDir, ModelDirError

    model = ModelDir(args.model)
    rows = model.describe_versions()
    try:
        model.current()
    except ModelDirError as error:  # the rows still say which version serves in its place
        print(f"CURRENT refused: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        mark = "*" if row["current"] else " "
        serving = "  (serving in place of the current version)" if row["serving"] and not row["current"] else ""
        if not row["ok"]:
            print(f"{mark} {row['version']}  CORRUPT: {row['note']}")
            continue
        print(f"{mark} {row['version']}  {row['created']}  {len(row['classes'])} classes  "
              f"{row['note'] or ''}".rstrip() + serving)
        if row["exemplars_damaged"]:
            names = ", ".join(repr(damaged["class"]) for damaged in row["exemplars_damaged"])
            print(f"      exemplars of {names} damaged ({row['exemplars_damaged'][0]['reason']}): learning is refused "
                  f"until {model.repair_hint()}")
    return 0


def _model_rollback(args: argparse.Namespace) -> int:
    from avcil.modeldir import ModelDir, ModelDirError

    model = ModelDir(args.model)
    try:
        before = model.current()
    except ModelDirError:
        before = "a refused CURRENT"
    after = model.rollback(args.version)
    print(f"{model.root}: current version {before} -> {after}")
    return 0


def _model_repair(args: argparse.Namespace) -> int:
    from avcil.modeldir import ModelDir

    model = ModelDir(args.model)
    repaired = model.repair()
    if repaired["version"] is None:
        print(f"{model.root}: nothing to repair ({repaired['parent']} serves, its exemplars are whole)")
        return 0
    dropped = ", ".join(map(repr, repaired["dropped"])) or "none"
    print(f"{model.root}: committed {repaired['parent']} again as {repaired['version']}; exemplars dropped: "
          f"{dropped} (learning goes on without them; the head is unchanged)")
    return 0


def add_recognition_flags(parser: argparse.ArgumentParser, camera_required: bool = True) -> None:
    """The recogniser's flags, shared by `avcil run` and `avcil serve`: model, camera, microphone, backend, device,
    hop, threshold, smoothing, top-k. Checked by check_recognition_flags."""
    parser.add_argument("--model", required=True, metavar="DIR", help="model dir (from avcil train / avcil learn)")
    parser.add_argument("--camera", required=camera_required, metavar="SRC",
                        help="camera index (0), http/rtsp URL, or video file(s), comma-separated, played in real "
                             "time; a file without a video frame is refused")
    parser.add_argument("--mic", required=True, metavar="SRC",
                        help="sounddevice input by index or name ('default', 'pulse'), or audio/video file(s), "
                             "comma-separated, played in real time")
    parser.add_argument("--backend", choices=KINDS, default="torch", help="runtime of the encoders (default "
                        "torch); onnxruntime/tensorrt need `avcil export` first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--hop", type=float, metavar="S", help="seconds between decisions (default: a third of the "
                        "profile's window)")
    from avcil.runtime.decision import (DEFAULT_SCORE, DEFAULT_SMOOTHING, DEFAULT_THRESHOLDS, DEFAULT_TOP_K,
                                        FALLBACK_SCORE, SCORES)

    parser.add_argument("--score", choices=SCORES, help="the open-set score that says whether a window holds a "
                        f"known class at all (default {DEFAULT_SCORE}, or {FALLBACK_SCORE} for a model without the "
                        "analytic readout; docs/decision.md)")
    parser.add_argument("--threshold", type=float, help="below this smoothed score: 'unknown' (default: the "
                        "score's, " + ", ".join(f"{k} {v}" for k, v in DEFAULT_THRESHOLDS.items()) + ")")
    parser.add_argument("--smoothing", type=int, default=DEFAULT_SMOOTHING, help="average the scores of this many "
                        f"windows (default {DEFAULT_SMOOTHING})")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"classes listed per decision (default "
                        f"{DEFAULT_TOP_K})")


def add_event_flags(parser: argparse.ArgumentParser) -> None:
    """How decisions become events (avcil.runtime.events), shared by `avcil run` and `avcil serve`."""
    from avcil.runtime.events import END_WINDOWS, START_WINDOWS

    parser.add_argument("--event-start", type=int, default=START_WINDOWS, metavar="N", help="windows labelled a "
                        f"class in a row that open its event (default {START_WINDOWS})")
    parser.add_argument("--event-end", type=int, default=END_WINDOWS, metavar="M", help="windows not labelled it "
                        f"in a row that close it (default {END_WINDOWS})")


def add_parsers(subparsers) -> None:
    from avcil.runtime.mqtt import add_mqtt_flags

    run = subparsers.add_parser(
        "run", help="recognise live from a camera and a microphone (or paced files); one JSON line per decision",
        description="Live recognition: clip windows from the camera and the microphone, encoders on the chosen "
                    "backend, the model's head, smoothing, a label or 'unknown'. Picks up new versions of the "
                    "model dir (avcil learn, avcil model rollback) without a restart.")
    add_recognition_flags(run, camera_required=False)
    run.add_argument("--audio-only", action="store_true", help="no camera: decide on sound alone (by the readout "
                     "of the audio alone where the model keeps one, else with black frames), every decision marked "
                     "video_missing")
    run.add_argument("--jsonl", metavar="FILE", help="append one JSON line per decision here")
    run.add_argument("--events", metavar="FILE", help="append one JSON line per event here: a label held over "
                     "consecutive windows, with its start, end and peak score (docs/decision.md#events)")
    add_event_flags(run)
    add_mqtt_flags(run)
    run.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C, "
                     "or until file sources end)")
    run.add_argument("--loop", action="store_true", help="file sources: play again from the start when done")
    run.add_argument("--slot", type=float, default=0.0, metavar="S",
                     help="file sources: give each file at least S seconds, in the middle of them (silence and "
                          "its first frame held before it, silence and its last frame after)")
    run.add_argument("--video-out", metavar="FILE", help="write an annotated video (one frame per decision)")
    run.add_argument("--quiet", action="store_true", help="no console line per decision")
    run.add_argument("--threads", type=int, default=0, metavar="N", help="torch and onnxruntime intra-op threads "
                     "(default: 1 for torch, 2 for onnxruntime, or fewer cores; recorded in each decision's JSON)")
    run.add_argument("--spin", action="store_true", help="onnxruntime: keep the threads of the sound-event CNN, which "
                     "runs alone after each window's end, spinning between calls, for a device that runs nothing "
                     "else (two quiet cores: decision p50 about 13 ms lower; beside a CPU-bound process p95 about "
                     "25 ms higher)")
    run.set_defaults(func=_run)

    learn = subparsers.add_parser(
        "learn", help="add a class to a model dir from files or from clips recorded live",
        description="Learn a new class on the device: encode its clips, check them (the enrolment gate names "
                    "clips that look wrong; docs/architecture.md#the-enrolment-gate), add the class to the head's "
                    "analytic readout in closed form (default; milliseconds, exact joint least squares over "
                    "everything seen) or run "
                    "one AV-CIL gradient step with the current head as teacher and the exemplars replayed "
                    "(--method avcil), update the memory, commit a new version. A running `avcil run` on the "
                    "same model dir picks it up from its next decision.")
    learn.add_argument("--model", required=True, metavar="DIR")
    learn.add_argument("--label", metavar="NAME", help="name of the new class")
    learn.add_argument("--background", action="store_true", help="the files or recordings hold none of the "
                       "classes: learn them as background, which the model answers 'unknown' to")
    learn.add_argument("--force", action="store_true", help="with --background: add files that look like a class")
    learn.add_argument("--not", dest="not_label", metavar="LABEL", help="the files or recordings were labelled LABEL "
                       "and are not it (nor any class): from the new version on, windows like them are 'unknown'")
    learn.add_argument("--files", nargs="+", metavar="F", help="video files (with sound) of the new class")
    learn.add_argument("--camera", metavar="SRC", help="record from this camera (with --mic and --clips)")
    learn.add_argument("--mic", metavar="SRC", help="record from this microphone")
    learn.add_argument("--clips", type=int, default=DEFAULT_CLIPS, metavar="N", help=f"number of clips to record "
                       f"(default {DEFAULT_CLIPS}: fewer find fewer of the class's events, `avcil bench enrol`)")
    learn.add_argument("--minutes", type=float, metavar="M", help="with --background --camera --mic: record for M "
                       "minutes that you vouch hold none of the classes, keeping --windows windows spread over them "
                       "(the device's own background: what lowers false accepts most, docs/decision.md)")
    learn.add_argument("--windows", type=int, default=STRETCH_WINDOWS, metavar="N", help=f"with --minutes: windows "
                       f"kept (default {STRETCH_WINDOWS})")
    learn.add_argument("--countdown", type=float, default=3.0, metavar="S", help="countdown before each clip")
    learn.add_argument("--method", choices=FIELD_METHODS, default="analytic", help="analytic (default): one "
                       "closed-form update; avcil: a gradient step (tens of seconds), after which the head's linear "
                       "classifier decides")
    learn.add_argument("--refine", action="store_true", help="after the analytic commit, also run the gradient "
                       "step at low priority and commit it as a later version")
    learn.add_argument("--drop-suspect", action="store_true", help="leave out the clips the enrolment gate finds "
                       "suspect (silent or clipped audio, a dark, frozen or blurred camera, near-duplicates, clips "
                       "closer to another class); without it they are learnt, a line each saying so")
    learn.add_argument("--json", action="store_true", help="print one JSON object per committed version: version, "
                       "label, clips, method, encode_seconds, learn_seconds, suspect (the gate's clips: clip, "
                       "reasons, dropped), separation (nearest_class, margin, weakest_margin, recognised)")
    defaults = FieldSettings()
    learn.add_argument("--epochs", type=int, help=f"epochs of the gradient update (default {defaults.epochs})")
    learn.add_argument("--batch-size", type=int, help=f"new clips per batch (default {defaults.batch_size})")
    learn.add_argument("--exemplar-batch-size", type=int, help=f"exemplars replayed beside them (default "
                       f"{defaults.exemplar_batch_size})")
    learn.add_argument("--instance-weight", type=float, help=f"λ_I of D-AVSC instance (default "
                       f"{defaults.instance_weight})")
    learn.add_argument("--precision", choices=PRECISIONS, help="of the update's forward pass (default auto: bf16 "
                       "where the CPU or GPU computes it natively, about twice as fast; else fp32)")
    learn.add_argument("--threads", type=int, default=LEARNER_THREADS, help="torch threads for encoding and the "
                       f"update (default {LEARNER_THREADS}: a running `avcil run` keeps the other cores; 0: all cores)")
    learn.add_argument("--nice", type=int, default=LEARNER_NICE, help="lower the update's CPU priority by this "
                       f"much, so a running `avcil run` keeps its decision latency (default {LEARNER_NICE}; 0 to keep "
                       f"it)")
    learn.add_argument("--lock-wait", type=float, default=DEFAULT_LOCK_WAIT_S, metavar="S", help="wait up to S "
                       "seconds for another writer of the model dir (another `avcil learn`, a rollback) before "
                       f"recording or encoding anything (default {DEFAULT_LOCK_WAIT_S:g}; 0: fail at once)")
    learn.set_defaults(func=_learn)

    model = subparsers.add_parser("model", help="versions of a model dir: list, rollback, repair")
    actions = model.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every version, its classes, and whether it verifies")
    listing.add_argument("--model", required=True, metavar="DIR")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_model_list)
    rollback = actions.add_parser("rollback", help="make an earlier version current (default: the previous good)")
    rollback.add_argument("--model", required=True, metavar="DIR")
    rollback.add_argument("version", nargs="?", help="version to make current (e.g. v0002)")
    rollback.set_defaults(func=_model_rollback)
    repair = actions.add_parser("repair", help="commit the serving version again without its damaged exemplars, "
                                "so that learning can go on")
    repair.add_argument("--model", required=True, metavar="DIR")
    repair.set_defaults(func=_model_repair)
