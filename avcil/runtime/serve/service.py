"""The device behind the page: the model dir, the recogniser on its thread, the one camera/microphone pair, what
is kept of the decisions and events, and the changes the page asks for (a new class, "not X", a rollback).

One camera and one microphone (a device opens each once): the service opens the pair at start (LiveInput) and
shares it. Recognition keeps deciding while a new class is recorded: the recording reads the same frame history and
audio ring (field.record_from), so the page goes on showing the live view and its labels through the countdown,
and the new class is live from the recogniser's next reload of the model dir (Recognizer's watcher, within a
decision or two of the commit).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from avcil.errors import AvcilError, InvalidInput
from avcil.runtime.field_settings import DEFAULT_CLIPS
from avcil.runtime.serve.job import Busy, Gone, LearnJob
from avcil.runtime.serve.logs import KEPT_DECISIONS, KEPT_EVENTS, DecisionLog, EventLog, WindowFeatures

log = logging.getLogger(__name__)

MAX_CLIPS = 60  # above the default (DEFAULT_CLIPS), for a class that needs more
MAX_COUNTDOWN_S = 10.0
RELOAD_WAIT_S = 10.0  # how long a learning job waits for the recogniser to pick up the version it committed
MJPEG_WIDTH = 480  # frames are scaled to this width, so that the label reads on a small camera's picture


class DeviceService:
    """The model dir, the recogniser, the one camera/microphone pair, the decisions and their windows' features,
    their events (to the page and, with an MqttTarget, to a broker) and the learning job."""

    def __init__(self, model_dir: str | Path, camera: str, microphone: str, backend: str = "torch",
                 device: str = "cpu", hop: float | None = None, rule: dict | None = None,
                 event_windows: tuple[int, int] | None = None, mqtt=None):
        from avcil.model.encoders import profile_from_record
        from avcil.modeldir import ModelDir
        from avcil.modeldir.schema import ManifestKey
        from avcil.runtime.events import EventRelay, EventTracker
        from avcil.runtime.live import LiveInput
        from avcil.runtime.mqtt import MqttPublisher
        from avcil.runtime.recognizer import Recognizer, live_timing

        self.model_dir, self.backend = Path(model_dir), backend
        self.model = ModelDir(model_dir)
        record = self.model.manifest()[ManifestKey.FEATURES].get("profile")
        # The torch profile encodes the recorded clips; on the torch backend the recogniser shares it.
        self.profile = profile_from_record(record, where=str(model_dir))
        self.recognizer = Recognizer(model_dir, backend, device, profile=self.profile if backend == "torch" else None,
                                     **(rule or {}))
        self.seconds, self.hop = live_timing(self.recognizer, hop)
        self.live = LiveInput(camera, microphone, self.recognizer.audio_prep.sample_rate, self.seconds, self.hop,
                              self.recognizer.frame_prep)
        self.decisions = DecisionLog()
        self.features = WindowFeatures()
        self.events = EventLog()
        self.publisher = MqttPublisher(mqtt, classes=lambda: self.recognizer.class_names) if mqtt else None
        self.event_relay = EventRelay(EventTracker(*(event_windows or ())),
                                      [self.events] + ([self.publisher] if self.publisher else []))
        self.job = LearnJob()
        self.recognition_error: str | None = None
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # Running -----------------------------------------------------------------------------------------------
    def start(self) -> "DeviceService":
        """Open the sources (a SourceError naming one that delivers nothing) and start deciding."""
        self.live.open()
        if self.publisher is not None:
            self.publisher.start(self.recognizer.version)  # connects in the background
        self._thread = threading.Thread(target=self._recognise, name="recognition", daemon=True)
        self._thread.start()
        return self

    def _recognise(self) -> None:
        from avcil.runtime.recognizer import recognise_input

        try:
            recognise_input(self.recognizer, self.live, lambda decision, window: self._decided(decision),
                            self.seconds, self.hop, stop=self.stopping)
            self.live.raise_failure()
        except Exception as error:  # noqa: BLE001 - shown on the page and logged; the server keeps serving
            self.recognition_error = f"recognition stopped: {error}"
            log.exception("recognition stopped")
        finally:
            # Recognition is over (stopped, its file sources played out, or failed): the event under way closes,
            # to the page and the broker, which then hears 'offline'.
            self.event_relay.close()

    def _decided(self, decision: dict) -> None:
        n = self.decisions.add(decision)
        self.features.add(n, *self.recognizer.last_features)  # this thread's decide() has just set them
        if self.publisher is not None:
            self.publisher.decision(decision)
        self.event_relay(decision)

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.live.close()
        self.recognizer.close()

    # What the API answers ----------------------------------------------------------------------------------
    def status(self) -> dict:
        return {"version": self.recognizer.version, "classes": self.recognizer.class_names,
                "decisions": self.decisions.count, "backend": self.backend, "latest": self.decisions.latest(),
                "window_s": self.seconds, "hop_s": self.hop, "learning": self.job.snapshot(),
                "recognition_error": self.recognition_error,
                "mqtt": self.publisher.status() if self.publisher is not None else None,
                "default_clips": DEFAULT_CLIPS, "max_clips": MAX_CLIPS}

    def versions(self) -> list[dict]:
        return self.model.describe_versions()

    def rollback(self, version: str) -> dict:
        if self.job.busy:
            raise Busy(f"{self.job.doing}; roll back when it is done")
        before = self.model.current()
        return {"before": before, "after": self.model.rollback(version)}

    def learn(self, label: str, clips: int, countdown_s: float, drop_suspect: bool = False) -> dict:
        """Refuse what `avcil learn` refuses before recording (field.preflight_new_class: nothing recorded), then
        record here, and check (the enrolment gate; `drop_suspect` leaves out the clips it finds suspect) and learn
        in a process of its own (serve.learning); the job's state says how it goes."""
        from avcil.runtime.field import preflight_new_class

        try:
            preflight_new_class(self.model, label)
        except AvcilError as error:
            raise InvalidInput(self._unplaced(str(error))) from None
        number = self.job.begin(label, "recording", f"recording {clips} clips of {label!r}",
                                f"class {label!r} is being learnt", clips=clips, step=None)
        threading.Thread(target=self._learn, args=(label, clips, countdown_s, drop_suspect), name=f"learn {label}",
                         daemon=True).start()
        return {"id": number, **self.job.snapshot()}

    def _learn(self, label: str, clips: int, countdown_s: float, drop_suspect: bool = False) -> None:
        """The job's thread: records from the shared live input, then waits for the learning process."""
        from avcil.runtime.clip_signals import measure_signals
        from avcil.runtime.enrol_checks import suspect_summary
        from avcil.runtime.field import record_from, step_line
        from avcil.runtime.serve.learning import Enrolment, learn_in_process

        def step(event: dict) -> None:
            self.job.update(step=event, message=step_line(event))

        def gated(kept: int, findings: dict) -> None:
            self.job.update(message=f"learning {label!r} from {kept} clips{suspect_summary(findings['suspect'])}",
                            **findings)

        try:
            signals = []  # what each clip's recording shows, for the enrolment gate
            audio, visual = record_from(self.live, clips, self.profile, countdown_s, pause_s=0.5, on_step=step,
                                        on_recorded=lambda n, window: signals.append(
                                            measure_signals(window.waveform, window.frames)))
            self.job.update(state="learning", step=None, message=f"checking and learning {label!r}")
            learnt = learn_in_process(Enrolment(str(self.model_dir), label, audio, visual, signals,
                                                [f"clip {n}" for n in range(1, clips + 1)], drop_suspect), gated)
            summary = learnt.summary
            self._await_live(summary["version"])
            self.job.update(state="live", message=f"{label!r} learnt from {summary['clips']} clips"
                                                  f"{suspect_summary(learnt.findings['suspect'])} in "
                                                  f"{summary['seconds'] * 1000:.0f} ms: {summary['version']} is live",
                            notes=learnt.notes)
        except Exception as error:  # noqa: BLE001 - the job says so; this thread has no one else to tell
            self._failed(error, f"learning {label!r}")

    def learn_background(self, minutes: float) -> dict:
        """A stretch of the device's own background, as `avcil learn --background --minutes` records it: the operator
        vouches that the next `minutes` hold none of the classes. Recorded here from the shared live input on a
        thread of its own; the update itself (the guard's filter, the sums, one solve) takes milliseconds, so it runs
        in this process, as a correction does."""
        number = self.job.begin("background", "recording", f"recording {minutes:g} minutes of background",
                                "background is being recorded", step=None)
        threading.Thread(target=self._learn_background, args=(minutes,), name="learn background",
                         daemon=True).start()
        return {"id": number, **self.job.snapshot()}

    def _learn_background(self, minutes: float) -> None:
        from avcil.runtime.background import learn_background
        from avcil.runtime.field import record_stretch_from
        from avcil.runtime.field_settings import STRETCH_WINDOWS
        from avcil.runtime.learning import without_class_like

        try:
            audio, visual = record_stretch_from(self.live, minutes * 60, STRETCH_WINDOWS, self.profile,
                                                on_line=lambda line: self.job.update(message=line))
            self.job.update(state="learning", message=f"learning {len(audio)} windows as background")
            notes = []
            audio, visual = without_class_like(self.model.load(with_memory=False), audio, visual, log=notes.append)
            summary = learn_background(self.model_dir, audio, visual)
            self._await_live(summary["version"])
            self.job.update(state="live", version=summary["version"], notes=notes,
                            message=f"background learnt from {summary['background_windows']} windows over "
                                    f"{minutes:g} minutes: {summary['version']} is live")
        except Exception as error:  # noqa: BLE001 - the job says so; this thread has no one else to tell
            self._failed(error, "learning background")

    def correct(self, decision: int | None = None, event: int | None = None) -> dict:
        """"That was not X" of a kept decision, or of a closed event's windows still kept and labelled its label:
        `learn_not` with their windows' features, committed as a new version, answered once the recogniser uses
        it. Quick (the update is milliseconds), so not on a thread of its own, nor in a learning process like a new
        class's (serve.learning): starting one takes seconds (a fresh interpreter importing torch) for milliseconds
        of work, which a priority drop and a thread cap could not make gentler on the recogniser. The job still
        says it is under way, which keeps it and a class being learnt apart."""
        from avcil.runtime.background import learn_not

        what = f"decision {decision}" if decision is not None else f"event {event}"
        label, chosen = self._decision_to_correct(decision) if decision is not None else self._event_to_correct(event)
        numbers, audio, visual = self.features.rows([d["n"] for d in chosen])
        if not numbers:
            raise Gone(f"{what} is too old: the device keeps the windows of decision {self.features.oldest} on")
        windows = f"{len(numbers)} window{'s' if len(numbers) > 1 else ''}"
        self.job.begin(label, "learning", f"learning that {what} was not {label!r} ({windows})",
                       f"{label!r} is being corrected", decisions=numbers)
        try:
            summary = learn_not(self.model_dir, label, audio, visual, sources=[f"page decision {n}" for n in numbers])
            self.decisions.mark(numbers, corrected=summary["version"])
            self._await_live(summary["version"])
        except AvcilError as error:  # refused (no analytic readout, a class since rolled back) or not committed
            raise InvalidInput(self._failed(error, f"correcting {label!r}")) from None
        except Exception as error:
            self._failed(error, f"correcting {label!r}")
            raise
        self.job.update(state="live", message=f"{label!r} corrected: {summary['version']} ({windows} of {what} "
                                              f"learnt as not {label!r})")
        return self.job.snapshot()

    def _decision_to_correct(self, n: int) -> tuple[str, list[dict]]:
        """(its label, [the decision]) of a kept decision labelled a class not yet corrected; else the refusal."""
        from avcil.runtime.decision import UNKNOWN

        kept = self.decisions.get(n)
        if kept is None:
            raise Gone(f"decision {n} is no longer kept (the device keeps its last {KEPT_DECISIONS} decisions; the "
                       f"newest is {self.decisions.count})")
        if kept["label"] == UNKNOWN:
            raise InvalidInput(f"decision {n} is {UNKNOWN}: nothing to correct")
        if "corrected" in kept:
            raise InvalidInput(f"decision {n} was already corrected ({kept['corrected']})")
        return kept["label"], [kept]

    def _event_to_correct(self, k: int) -> tuple[str, list[dict]]:
        """(its label, its kept windows labelled it and not yet corrected) of a kept event; else the refusal."""
        event = self.events.get(k)
        if event is None:
            raise Gone(f"event {k} is no longer kept (the device keeps its last {KEPT_EVENTS} events; the newest is "
                       f"{self.events.count})")
        labelled = [d for d in self.decisions.within(event["start"], event["end"]) if d["label"] == event["label"]]
        if not labelled:
            raise Gone(f"event {k} is too old: its decisions are no longer kept")
        fresh = [d for d in labelled if "corrected" not in d]
        if not fresh:
            raise InvalidInput(f"event {k} was already corrected ({labelled[-1]['corrected']})")
        return event["label"], fresh

    def _await_live(self, version: str) -> None:
        """Wait (the job loading) until the recogniser's watcher has swapped in the version just committed."""
        self.job.update(state="loading", version=version, message=f"committed {version}; loading it")
        deadline = time.monotonic() + RELOAD_WAIT_S
        while self.recognizer.version != version and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.recognizer.version != version:
            raise AvcilError(f"{version} was committed but the recogniser still uses {self.recognizer.version}")

    def _failed(self, error: Exception, doing: str) -> str:
        """The job ends failed, with the error's message (returned): an AvcilError's as it is; anything else is a
        bug, with its traceback in the log (a LearningCrashed's is logged by the learning process itself). Without
        the model dir's path (`_unplaced`)."""
        if not isinstance(error, AvcilError):
            log.error("%s failed", doing, exc_info=error)
        message = self._unplaced(str(error) if isinstance(error, AvcilError) else f"{doing} failed: {error}")
        self.job.update(state="failed", step=None, message=message)
        return message

    def _unplaced(self, message: str) -> str:
        """`message` without the model dir's path, which the model dir's own messages start with: the page is told
        nothing of the file system."""
        return message.replace(str(self.model.root), "the model dir")

    def frame_jpeg(self) -> bytes | None:
        """The newest camera frame with the latest decision on it, as JPEG."""
        import cv2

        from avcil.runtime.recognizer import labelled_frame

        newest = self.live.frames.latest()
        if newest is None:
            return None
        ok, data = cv2.imencode(".jpg", labelled_frame(newest[1], self.decisions.latest(), MJPEG_WIDTH),
                                [cv2.IMWRITE_JPEG_QUALITY, 80])
        return data.tobytes() if ok else None

