"""A class recorded on the page, checked and learnt in a process of its own, as `avcil learn` learns one: at its
priority (LEARNER_NICE) and with its torch and BLAS threads capped (LEARNER_THREADS), so that the enrolment gate and
the update take at most one core, at a lower priority, from the recogniser, which keeps deciding in the server's
process. On a thread of the server they would run at the recogniser's priority with torch's default threads.

Recording stays in the server, which owns the camera and microphone: the process is given the recorded clips'
features and what each recording showed (ClipSignals), runs the enrolment gate and `learn_class`, and sends back
what the page's job shows. The recogniser picks up the committed version by its watcher, as after `avcil learn`.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from dataclasses import dataclass

import numpy as np

from avcil.errors import AvcilError
from avcil.runtime.threads import LEARNER_NICE, LEARNER_THREADS, RuntimeThreads

# A fresh interpreter rather than a fork of the server: a fork would copy its threads' locks (uvicorn's, torch's,
# the recogniser's) in whatever state they were in, and torch's thread pools do not survive a fork.
SPAWN = multiprocessing.get_context("spawn")


@dataclass
class Enrolment:
    """What the learning process is given: the recorded clips of class `label`, as the gate and `learn_class` take
    them."""

    model_dir: str
    label: str
    audio: np.ndarray
    visual: np.ndarray
    signals: list  # ClipSignals of each clip's recording
    clips: list[str]  # their names in the gate's lines ("clip 3")
    drop_suspect: bool


@dataclass
class Learnt:
    """What the learning process answers: learn_class's summary, the gate's findings, the lines both logged, and the
    thread counts and priority it ran with (RuntimeThreads.record)."""

    summary: dict
    findings: dict
    notes: list[str]
    threads: dict


class LearningCrashed(Exception):
    """The learning process failed for a reason that is no refusal (a bug; its traceback is in the server's log), or
    ended without an answer."""


def learn_in_process(enrolment: Enrolment, on_gated=lambda kept, findings: None) -> Learnt:
    """Check and learn `enrolment` in a spawned process, waiting for it. `on_gated(kept, findings)` once the
    enrolment gate has passed: how many clips it keeps, which are now being learnt. A refusal is raised as an
    AvcilError with its message."""
    receiving, sending = SPAWN.Pipe(duplex=False)
    process = SPAWN.Process(target=_learn, args=(enrolment, sending), name=f"learn {enrolment.label}", daemon=True)
    process.start()
    sending.close()  # the child's end: once the child exits, recv() sees the pipe closed instead of blocking
    try:
        while True:
            try:
                kind, payload = receiving.recv()
            except EOFError:
                process.join()
                raise LearningCrashed(f"the learning process ended without an answer (exit code "
                                      f"{process.exitcode})") from None
            if kind == "gated":
                on_gated(*payload)
            elif kind == "learnt":
                return payload
            elif kind == "refused":
                raise AvcilError(payload)
            else:
                raise LearningCrashed(payload)
    finally:
        receiving.close()
        process.join()


def _learn(enrolment: Enrolment, answer) -> None:
    """The learning process: `avcil learn`'s priority and threads, then the gate and the update."""
    from avcil.modeldir import ModelDir
    from avcil.runtime.enrol_checks import gate_enrolment
    from avcil.runtime.field import learn_class

    os.nice(LEARNER_NICE)  # before torch starts its threads: they inherit it
    threads = RuntimeThreads(LEARNER_THREADS, blas=LEARNER_THREADS).apply()
    try:
        model, notes = ModelDir(enrolment.model_dir), []
        loaded = model.load(with_memory=False)
        audio, visual, findings = gate_enrolment(
            enrolment.label, loaded, enrolment.audio, enrolment.visual, enrolment.signals, enrolment.clips,
            enrolment.drop_suspect, exemplars=lambda: model.load(loaded.version).memory, log=notes.append)
        answer.send(("gated", (len(audio), findings)))
        summary = learn_class(enrolment.model_dir, enrolment.label, audio, visual, progress=False, log=notes.append)
        answer.send(("learnt", Learnt(summary, findings, notes, threads)))
    except AvcilError as error:
        answer.send(("refused", str(error)))
    except Exception as error:  # noqa: BLE001 - told to the server, whose log gets the traceback from here
        traceback.print_exc()
        answer.send(("crashed", f"{type(error).__name__}: {error}"))
    finally:
        answer.close()
