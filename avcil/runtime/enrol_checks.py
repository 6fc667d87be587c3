"""The enrolment gate: before a class is committed, which of its clips look wrong and why, and how well the class
will stand apart from the ones the model knows.

    check = check_enrolment(loaded, audio, visual, signals, clips)   # signals: clip_signals.measure_signals per clip
    check.suspects                  # {clip index: ["silent audio (peak -92 dBFS)", ...]}
    check.refuse_if_all_suspect("doorbell")
    kept = check.kept(drop_suspect)  # the clip indices to learn
    check.separation(kept)          # {"nearest_class", "margin", "recognised", ...}

A clip is suspect for what its recording shows (avcil/runtime/clip_signals.py: silent or clipped audio, a dark,
frozen or blurred camera), and for what the model makes of its features (the analytic readout, avcil/model/readout.py):
- a near-duplicate of an earlier clip: closer to it than NEAR_DUPLICATE in the readout's space measured in class
  spreads (avcil/runtime/class_space.py), where two clips of one class lie about 1.4 apart. The same moment offered
  twice weighs double. Only the later clip of a pair is suspect.
- closer to another class than to its own clips: with the class learnt from its other clips, the readout's output
  for some known class exceeds the clip's output for its own class by more than OTHER_CLASS_MARGIN. A clip of that
  class mixed in, or a class the model already knows under another name. A clip whose recording is at fault is not
  judged this way: its features say more about the fault than the class, and the fault is already named.
"Its other clips" are those whose recording looked right and that duplicate no earlier one (all of them if fewer
than two did): a black clip should not teach the class what it is, nor should the clip judge itself. The readout
gives each clip's outputs with it left out exactly and from one solve (`AnalyticReadout.left_out_outputs`).

Why outputs and not distances to class means for the second check: in the readout's expanded space the spoken and
written digits of AV-Digits lie 0.3-0.4 spreads from each other's means, their clips about 1 from their own, yet the
ridge tells them apart 88 % of the time: distances weigh every direction alike, the ridge the ones that separate.
Distances flagged 9 in 10 good clips of 5-clip enrolments there; the outputs, with the margin below, 1 in 30.

Faulty clips poison a class (Frigate's blurry face crops, offered for training, gave 92-100 % confident false
matches). The gate says what it sees and keeps the clips unless asked to drop them (`--drop-suspect`); a class whose
every clip is suspect is refused, since nothing sound is left to learn it from.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from avcil.errors import InvalidInput
from avcil.runtime.class_space import ClassSpace, readout_inputs_of
from avcil.runtime.clip_signals import ClipSignals, signal_faults

# Two clips of one class lie about √2 spreads apart (AV-Digits: no clip nearer its nearest sibling than 0.9); the
# same clip encoded twice lies 0 apart, a re-encoded copy or the same still scene recorded again a few hundredths.
# Under a tenth of a spread two clips add nothing one could not learn from one of them.
NEAR_DUPLICATE = 0.1
# Ridge outputs are about 1 for a class's own training clips and 0 for other classes' clips: a clip half a class
# nearer another class than its own is past the halfway mark between them. On AV-Digits (each digit enrolled into a
# model of the other nine, a held-out clip of one of those mixed in) the gate flags 3.2 % of good clips in 5-clip
# enrolments, 0.8 % at 10, none at 40, and this check names about half the mixed-in clips: digits are hard to tell
# apart from a few clips. A margin of 0.3 would name 87 % of them but flag a third of the good clips at 5.
OTHER_CLASS_MARGIN = 0.5


@dataclass
class EnrolmentCheck:
    """The gate's findings on the clips of one new class (indices in the order given)."""

    clips: list[str]  # how to name each clip: its file, or "clip N"
    suspects: dict[int, list[str]]  # clip index -> why it looks wrong, in the order found
    class_names: list[str] = field(default_factory=list)
    head: object | None = None  # a head whose readout is analytic (None: the model has none to judge with)
    inputs: torch.Tensor | None = None  # the clips' readout inputs
    all_left_out: torch.Tensor | None = None  # left_out_outputs with every clip learnt, once computed

    def which(self, index: int) -> str:
        """A clip named so that two clips of the same file (or recorded clips) are told apart."""
        number = f"clip {index + 1}"
        return number if self.clips[index] == number else f"{number} ({self.clips[index]})"

    def kept(self, drop_suspect: bool) -> list[int]:
        return [i for i in range(len(self.clips)) if not (drop_suspect and i in self.suspects)]

    def refuse_if_all_suspect(self, label: str) -> None:
        """An InvalidInput naming every clip's reasons when no clip is sound."""
        if self.clips and len(self.suspects) == len(self.clips):
            why = "; ".join(f"{self.clips[i]}: {', '.join(reasons)}" for i, reasons in sorted(self.suspects.items()))
            raise InvalidInput(f"class {label!r} not learnt: every clip looks wrong ({why}); record it again")

    def report(self, drop_suspect: bool) -> list[dict]:
        """One entry per suspect clip, for --json and the page."""
        return [{"clip": self.clips[i], "reasons": reasons, "dropped": drop_suspect}
                for i, reasons in sorted(self.suspects.items())]

    def lines(self, drop_suspect: bool) -> list[str]:
        """One line per suspect clip, saying what happens to it."""
        fate = "dropped" if drop_suspect else "kept (--drop-suspect leaves it out)"
        return [f"{entry['clip']} looks wrong: {', '.join(entry['reasons'])}; {fate}"
                for entry in self.report(drop_suspect)]

    def separation(self, kept: Sequence[int]) -> dict | None:
        """How the class learnt from these clips will stand apart from the model's classes, from each clip's ridge
        outputs with the class learnt from the other clips: `nearest_class`, the known class the clips score
        highest on average; `margin`, for the median clip its own class's output less the highest other class's
        (1: as apart as training clips, above 0: recognised, at or below 0: taken for another class);
        `weakest_margin`, the smallest; `recognised`, the share of clips whose own class wins. Margins need two
        clips or more. None when the model has no analytic readout to judge with."""
        if self.head is None or not len(kept):
            return None
        everything = list(kept) == list(range(len(self.clips)))
        if everything and self.all_left_out is not None:
            outputs = self.all_left_out  # the check's own solve: nothing suspect, nothing dropped
        else:
            outputs = self.head.readout.left_out_outputs(self.inputs[list(kept)])
        own, known = outputs[:, -1], outputs[:, :-1]
        nearest = int(known.mean(dim=0).argmax())
        report = {"nearest_class": self.class_names[nearest], "clips": len(kept), "margin": None,
                  "weakest_margin": None, "recognised": None}
        if len(kept) > 1:  # a clip left out of a class of one leaves it with nothing learnt
            margins = own - known.max(dim=1).values
            report.update(margin=round(float(margins.median()), 3), weakest_margin=round(float(margins.min()), 3),
                          recognised=round(float((margins > 0).double().mean()), 3))
        return report


def gate_enrolment(label: str, loaded, audio: np.ndarray, visual: np.ndarray, signals: Sequence[ClipSignals] | None,
                   clips: Sequence[str], drop_suspect: bool, exemplars: Callable[[], object] | None = None,
                   log: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray, dict]:
    """The gate as `avcil learn` and the page run it before committing: refuse a class whose every clip is
    suspect, log a line per suspect clip and one on the class's separation, drop the suspect clips if asked.
    (the features to learn, {"suspect": [...], "separation": {...} or None})."""
    check = check_enrolment(loaded, audio, visual, signals, clips, exemplars)
    check.refuse_if_all_suspect(label)
    for line in check.lines(drop_suspect):
        log(line)
    kept = check.kept(drop_suspect)
    separation = check.separation(kept)
    if separation is not None:
        log(separation_line(label, separation))
    return audio[kept], visual[kept], {"suspect": check.report(drop_suspect), "separation": separation}


def suspect_summary(suspect: list[dict]) -> str:
    """The suspect clips of a report in brackets, for a one-line message ("" for none)."""
    if not suspect:
        return ""
    return " (" + "; ".join(f"{entry['clip']} looked wrong, {'dropped' if entry['dropped'] else 'kept'}: "
                            f"{', '.join(entry['reasons'])}" for entry in suspect) + ")"


def separation_line(label: str, separation: dict) -> str:
    line = f"{label!r} beside the known classes: nearest {separation['nearest_class']!r}"
    if separation["margin"] is None:
        return line + " (one clip: no margin to measure)"
    return (line + f"; the median clip's margin {separation['margin']:+.2f} (1: as apart as training clips, 0: a "
            f"tie), {100 * separation['recognised']:.0f} % of the clips recognised when left out")


def check_enrolment(loaded, audio: np.ndarray, visual: np.ndarray, signals: Sequence[ClipSignals] | None,
                    clips: Sequence[str], exemplars: Callable[[], object] | None = None) -> EnrolmentCheck:
    """The gate's findings on a new class's clips (features; `signals` of each clip's recording, or None where
    there were none to measure) against the loaded version's classes. A model without an analytic readout gets
    one fitted from its exemplars for the check (`exemplars()`: its memory), as an analytic update would; without
    either the clips are checked for their recording only."""
    suspects: dict[int, list[str]] = {}
    for i, measured in enumerate(signals or []):
        faults = signal_faults(measured)
        if faults:
            suspects[i] = faults
    recorded_badly = set(suspects)
    check = EnrolmentCheck(list(clips), suspects, list(loaded.class_names))
    head = _head_with_readout(loaded.head, exemplars)
    if head is None:
        return check
    check.head, check.inputs = head, readout_inputs_of(head, audio, visual)
    duplicates = _duplicates(ClassSpace(head.readout).points(check.inputs))
    for i, earlier in duplicates.items():
        suspects.setdefault(i, []).append(f"near-duplicate of {check.which(earlier)}")
    if len(clips) > 1:
        learnt = torch.tensor([i not in suspects for i in range(len(clips))])
        learnt = learnt if 1 < learnt.sum() < len(clips) else None  # None: every clip
        outputs = head.readout.left_out_outputs(check.inputs, learnt)
        if learnt is None:
            check.all_left_out = outputs
        own, (other, nearest) = outputs[:, -1], outputs[:, :-1].max(dim=1)
        # A clip whose recording is at fault is not also judged by its features: silence or a black frame is
        # near whichever class it happens to be near, and the recording's fault already says why.
        judged = torch.tensor([i not in recorded_badly for i in range(len(clips))])
        for i in np.flatnonzero(((other - own > OTHER_CLASS_MARGIN) & judged).numpy()):
            name = check.class_names[int(nearest[i])]
            suspects.setdefault(int(i), []).append(f"closer to class {name!r} (output {float(other[i]):.2f}) than "
                                                   f"to its own clips ({float(own[i]):.2f})")
    return check


def _duplicates(points: torch.Tensor) -> dict[int, int]:
    """Each clip within NEAR_DUPLICATE of an earlier one -> the first such earlier clip."""
    apart = torch.cdist(points, points)
    found = {}
    for i in range(1, len(points)):
        close = torch.nonzero(apart[i, :i] < NEAR_DUPLICATE)
        if len(close):
            found[i] = int(close[0, 0])
    return found


def _head_with_readout(head, exemplars: Callable[[], object] | None):
    """The head if its readout is analytic; else a copy with one fitted from the exemplars; else None."""
    from avcil.runtime.field import FieldSettings, analytic_readout_spec
    from avcil.train.learner import fit_readout

    if head.readout is not None and head.config.readout["kind"] == "analytic":
        return head.eval()
    memory = exemplars() if exemplars is not None else None
    clips = memory.as_clip_set() if memory is not None else None
    if clips is None or not len(clips.labels):
        return None
    probe = copy.deepcopy(head)
    fit_readout(probe, analytic_readout_spec(), clips, range(len(clips.labels)), FieldSettings().train_config(),
                fresh=True)
    return probe.eval()
