"""The page's learning process (avcil.runtime.serve.learning): `avcil learn`'s priority and thread cap, the page's
refusals as messages, the version committed for the server's recogniser to pick up."""

import os

import pytest

from avcil.errors import AvcilError
from avcil.modeldir import ModelDir
from avcil.runtime.clip_signals import measure_signals
from avcil.runtime.serve.learning import Enrolment, learn_in_process
from avcil.runtime.threads import LEARNER_NICE, LEARNER_THREADS


def enrolment(model, profile, clips, label: str) -> Enrolment:
    signals = []
    audio, visual = profile.encode_files(clips, progress=False, on_decoded=lambda path, clip: signals.append(
        measure_signals(clip.waveform, clip.frames)))
    return Enrolment(str(model), label, audio, visual, signals, [f"clip {n}" for n in range(1, len(clips) + 1)],
                     drop_suspect=False)


def test_a_class_from_the_page_is_learnt_in_a_niced_thread_capped_process(analytic_model, tiny_profile, toy_clips):
    gated = []
    learnt = learn_in_process(enrolment(analytic_model, tiny_profile, toy_clips["green"][:4], "green"),
                              on_gated=lambda kept, findings: gated.append(kept))
    assert gated == [4]
    assert learnt.summary["version"] == ModelDir(analytic_model).current() == "v0002"
    assert ModelDir(analytic_model).load(with_memory=False).class_names[-1] == "green"
    assert learnt.threads["nice"] == min(19, os.nice(0) + LEARNER_NICE)
    assert learnt.threads["torch_intra_op"] == learnt.threads["blas"] == LEARNER_THREADS


def test_a_refusal_in_the_learning_process_comes_back_as_its_message(analytic_model, tiny_profile, toy_clips):
    # Clips of a class the model knows, under a new name: the enrolment gate finds each closer to 'red'.
    with pytest.raises(AvcilError, match="class 'again' not learnt: every clip looks wrong"):
        learn_in_process(enrolment(analytic_model, tiny_profile, toy_clips["red"][:2], "again"))
    assert ModelDir(analytic_model).current() == "v0001"
