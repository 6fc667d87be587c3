"""`avcil serve`: the device's web page. Live view (the camera with the current label drawn on it, as MJPEG; the
decision feed, as server-sent events; per-stage latency; the recent events and the one under way), adding a class
recorded from the device's own camera and microphone, "not X" on a decision or an event (avcil.runtime.background
`learn_not` with the windows it decided), the model's versions and rollback; every request behind a token. With
--mqtt the events also go to a broker, as `avcil run --mqtt` sends them (avcil.runtime.mqtt).

One camera and one microphone (a device opens each once): the server opens the pair at start (LiveInput) and
shares it. Recognition keeps deciding while a new class is recorded: the recording reads the same frame history and
audio ring (field.record_from), so the page goes on showing the live view and its labels through the countdown,
and the new class is live from the recogniser's next reload of the model dir (Recognizer's watcher, within a
decision or two of the commit).

Security: binds 127.0.0.1 unless --host says otherwise; a random token (secrets.token_urlsafe) printed at start or
read from --token-file, compared in constant time (hmac.compare_digest), required on every request: the header
`Authorization: Bearer T`, or `?token=T` once, which sets an HttpOnly, SameSite=Strict cookie and redirects to the
same address without the token. State changes are POSTs; one that carries an Origin must come from this server's
own, and one authenticated by the cookie alone must carry it (a cross-site form cannot then ride on the cookie).
What is served is the page's own files, held in memory by name, and JSON: nothing of the model dir or the file
system. The JSON API under /api/ is what the page itself uses.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import secrets
import signal
import socket
import stat
import sys
import threading
import time
from collections import OrderedDict, deque
from importlib import resources
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from avcil.errors import AvcilError, InvalidInput
from avcil.runtime.commands import add_event_flags, add_recognition_flags, check_event_flags, check_recognition_flags
from avcil.runtime.field_settings import DEFAULT_CLIPS
from avcil.runtime.inputs import check_flag, check_label, check_number, check_port, check_version_name, check_whole
from avcil.runtime.page_guards import HostAllowList, allowed_hosts, same_site_path
from avcil.runtime.page_json import BodyTooLarge, read_json_object

log = logging.getLogger(__name__)

TOKEN_COOKIE = "avcil_token"
MIN_TOKEN_CHARS = 16  # a token file with less guards the device with less than ~96 bits
KEPT_DECISIONS = 600  # what /api/decisions can return: minutes of decisions at a few a second
# The encoder features of the recent windows, for "not X": at most KEPT_DECISIONS windows and this many bytes. A lite
# window is 704 audio + 8 x 49 x 320 visual floats (493 KiB): the last 133 windows, two minutes at its 0.96 s hop.
# The tiny profile's (1.1 KiB) are kept for all KEPT_DECISIONS.
KEPT_FEATURE_BYTES = 64 * 2**20
KEPT_EVENTS = 200  # what /api/detections can return: the recent events (an hour's worth at a few a minute)
MJPEG_FPS = 5.0  # the live view: a few frames a second is what a person watching a label needs
MJPEG_WIDTH = 480  # frames are scaled to this width, so that the label reads on a small camera's picture
EVENT_POLL_S = 0.05  # how often the decision stream looks for new decisions: well under a hop, and cheap
MAX_CLIPS = 60  # above the default (DEFAULT_CLIPS), for a class that needs more
MAX_COUNTDOWN_S = 10.0
RELOAD_WAIT_S = 10.0  # how long a learning job waits for the recogniser to pick up the version it committed
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}


# Decisions and learning ------------------------------------------------------------------------------------------
class DecisionLog:
    """The recent decisions, numbered from 1 in the order they were made."""

    def __init__(self, keep: int = KEPT_DECISIONS):
        self.kept: deque[dict] = deque(maxlen=keep)
        self.count = 0
        self.lock = threading.Lock()

    def add(self, decision: dict) -> int:
        """Keep `decision`; its number."""
        with self.lock:
            self.count += 1
            self.kept.append({"n": self.count, **decision})
            return self.count

    def after(self, n: int, limit: int = 200) -> list[dict]:
        with self.lock:
            return [d for d in self.kept if d["n"] > n][-limit:]

    def get(self, n: int) -> dict | None:
        """Decision `n`, while it is kept."""
        with self.lock:
            index = self._index(n)
            return None if index is None else self.kept[index]

    def within(self, start: float, end: float) -> list[dict]:
        """The kept decisions whose windows lie within [start, end] (an event's span, on the sources' clock)."""
        with self.lock:
            return [d for d in self.kept if start <= d["window"][0] and d["window"][1] <= end]

    def mark(self, numbers: list[int], **fields) -> None:
        """Add `fields` to the kept decisions numbered `numbers`. As new dicts: the decisions' stream may be
        serialising the old ones meanwhile."""
        with self.lock:
            for n in numbers:
                index = self._index(n)
                if index is not None:
                    self.kept[index] = {**self.kept[index], **fields}

    def _index(self, n: int) -> int | None:
        """Where decision `n` is in `kept` (numbers are consecutive), or None."""
        first = self.count - len(self.kept) + 1
        return n - first if first <= n <= self.count else None

    def latest(self) -> dict | None:
        with self.lock:
            return self.kept[-1] if self.kept else None


class EventLog:
    """The page's outlet of events (avcil.runtime.events.EventOutlet): the recent ones, numbered from 1 as they
    closed, and the one under way."""

    def __init__(self, keep: int = KEPT_EVENTS):
        self.kept: deque[dict] = deque(maxlen=keep)
        self.count = 0
        self.open: dict | None = None
        self.lock = threading.Lock()

    def event(self, event: dict) -> None:
        with self.lock:
            self.count += 1
            self.kept.append({"n": self.count, **event})

    def ongoing(self, event: dict | None) -> None:
        with self.lock:
            self.open = event

    def close(self) -> None:
        pass

    def get(self, n: int) -> dict | None:
        """Event `n`, while it is kept."""
        with self.lock:
            return next((e for e in self.kept if e["n"] == n), None)

    def after(self, n: int, limit: int = 100) -> dict:
        """The events numbered after `n` (the newest `limit`), the one under way, and the last number."""
        with self.lock:
            return {"detections": [e for e in self.kept if e["n"] > n][-limit:], "ongoing": self.open,
                    "last": self.count}


class WindowFeatures:
    """The encoder features of the recent decisions' windows (audio [1, Da], visual [1, T, S, Dv]) by decision
    number: what "not X" learns from. The newest KEPT_DECISIONS at most, and no more than KEPT_FEATURE_BYTES
    together; the oldest go first."""

    def __init__(self, keep: int = KEPT_DECISIONS, budget: int = KEPT_FEATURE_BYTES):
        self.kept: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.keep, self.budget, self.bytes = keep, budget, 0
        self.lock = threading.Lock()

    def add(self, n: int, audio: np.ndarray, visual: np.ndarray) -> None:
        # Copies: whether a backend's output array stays its own after the next window is the backend's business.
        rows = (np.array(audio), np.array(visual))
        with self.lock:
            self.kept[n] = rows
            self.bytes += rows[0].nbytes + rows[1].nbytes
            while len(self.kept) > self.keep or (self.bytes > self.budget and len(self.kept) > 1):
                audio, visual = self.kept.popitem(last=False)[1]
                self.bytes -= audio.nbytes + visual.nbytes

    def rows(self, numbers: list[int]) -> tuple[list[int], np.ndarray | None, np.ndarray | None]:
        """The kept ones among `numbers`, with their features one row each: (numbers, audio, visual)."""
        with self.lock:
            found = [n for n in numbers if n in self.kept]
            if not found:
                return [], None, None
            return found, *(np.concatenate([self.kept[n][part] for n in found]) for part in (0, 1))

    @property
    def oldest(self) -> int | None:
        with self.lock:
            return next(iter(self.kept), None)


class LearnJob:
    """What the page shows of a change to the model that it asked for (adding a class, "not X"): state idle |
    recording | learning | loading | live | failed, the recording step (see field.record_from), a message, the
    version committed. One at a time."""

    UNDER_WAY = ("recording", "learning", "loading")

    def __init__(self):
        self.lock = threading.Lock()
        self.state: dict = {"state": "idle", "id": 0}
        self.doing = ""  # what is under way, for the refusal of another

    def update(self, **fields) -> None:
        with self.lock:
            self.state = {**self.state, **fields, "updated": round(time.time(), 3)}

    def begin(self, label: str, state: str, message: str, doing: str, **fields) -> int:
        """Start a new job in `state` (its number), or Busy while one is under way. `doing`: what it is, as in
        "class 'x' is being learnt"."""
        with self.lock:
            if self.state["state"] in self.UNDER_WAY:
                raise Busy(f"{self.doing}; wait until it is done")
            number, self.doing = self.state["id"] + 1, doing
            self.state = {"state": state, "id": number, "label": label, "message": message, "version": None,
                          **fields, "updated": round(time.time(), 3)}
            return number

    @property
    def busy(self) -> bool:
        with self.lock:
            return self.state["state"] in self.UNDER_WAY

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.state)


class Busy(InvalidInput):
    """A request that conflicts with work under way (answered 409)."""


class Gone(InvalidInput):
    """A request for a decision or an event the device no longer keeps (answered 404)."""


class DeviceService:
    """The model dir, the recogniser, the one camera/microphone pair, the decisions and their windows' features,
    their events (to the page and, with an MqttTarget, to a broker) and the learning job."""

    def __init__(self, model_dir: str | Path, camera: str, microphone: str, backend: str = "torch",
                 device: str = "cpu", hop: float | None = None, rule: dict | None = None,
                 event_windows: tuple[int, int] | None = None, mqtt=None):
        from avcil.model.encoders import profile_from_record
        from avcil.modeldir import ModelDir
        from avcil.runtime.events import EventRelay, EventTracker
        from avcil.runtime.live import LiveInput
        from avcil.runtime.mqtt import MqttPublisher
        from avcil.runtime.recognizer import Recognizer, live_timing

        self.model_dir, self.backend = Path(model_dir), backend
        self.model = ModelDir(model_dir)
        record = self.model.manifest()["features"].get("profile")
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
        """Check the name against the current version's classes (an InvalidInput, nothing recorded, for a known
        one), then record, check (the enrolment gate; `drop_suspect` leaves out the clips it finds suspect) and
        learn in the background; the job's state says how it goes."""
        from avcil.runtime.field import check_new_label

        check_new_label([c["name"] for c in self.model.manifest()["classes"]], label, Path("this device"))
        number = self.job.begin(label, "recording", f"recording {clips} clips of {label!r}",
                                f"class {label!r} is being learnt", clips=clips, step=None)
        threading.Thread(target=self._learn, args=(label, clips, countdown_s, drop_suspect), name=f"learn {label}",
                         daemon=True).start()
        return {"id": number, **self.job.snapshot()}

    def _learn(self, label: str, clips: int, countdown_s: float, drop_suspect: bool = False) -> None:
        from avcil.runtime.clip_signals import measure_signals
        from avcil.runtime.enrol_checks import gate_enrolment, suspect_summary
        from avcil.runtime.field import learn_class, record_from, step_line

        def step(event: dict) -> None:
            self.job.update(step=event, message=step_line(event))

        try:
            signals = []  # what each clip's recording shows, for the enrolment gate
            audio, visual = record_from(self.live, clips, self.profile, countdown_s, pause_s=0.5, on_step=step,
                                        on_recorded=lambda n, window: signals.append(
                                            measure_signals(window.waveform, window.frames)))
            self.job.update(state="learning", step=None, message=f"checking and learning {label!r}")
            notes = []
            loaded = self.model.load(with_memory=False)
            audio, visual, findings = gate_enrolment(
                label, loaded, audio, visual, signals, [f"clip {n}" for n in range(1, clips + 1)], drop_suspect,
                exemplars=lambda: self.model.load(loaded.version).memory, log=notes.append)
            self.job.update(message=f"learning {label!r} from {len(audio)} clips"
                                    f"{suspect_summary(findings['suspect'])}", **findings)
            summary = learn_class(self.model_dir, label, audio, visual, progress=False, log=notes.append)
            version = summary["version"]
            self._await_live(version)
            self.job.update(state="live", message=f"{label!r} learnt from {len(audio)} clips"
                                                  f"{suspect_summary(findings['suspect'])} in "
                                                  f"{summary['seconds'] * 1000:.0f} ms: {version} is live", notes=notes)
        except Exception as error:  # noqa: BLE001 - the job says so; this thread has no one else to tell
            self._failed(error, f"learning {label!r}")

    def correct(self, decision: int | None = None, event: int | None = None) -> dict:
        """"That was not X" of a kept decision, or of a closed event's windows still kept and labelled its label:
        `learn_not` with their windows' features, committed as a new version, answered once the recogniser uses
        it. Quick (the update is milliseconds), so not on a thread of its own; the job still says it is under way,
        which keeps it and a class being learnt apart."""
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
        bug, with its traceback in the log. The page is told nothing of the file system: not the model dir's
        path, which the model dir's own messages start with."""
        if not isinstance(error, AvcilError):
            log.error("%s failed", doing, exc_info=error)
        message = str(error) if isinstance(error, AvcilError) else f"{doing} failed: {error}"
        message = message.replace(str(self.model.root), "the model dir")
        self.job.update(state="failed", step=None, message=message)
        return message

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


# The web application ---------------------------------------------------------------------------------------------
def page_files() -> dict[str, tuple[bytes, str]]:
    """The page's files by name (avcil/runtime/web/, package data), read once: what /static/ can serve."""
    folder = resources.files("avcil.runtime") / "web"
    return {entry.name: (entry.read_bytes(), STATIC_TYPES[Path(entry.name).suffix])
            for entry in folder.iterdir() if Path(entry.name).suffix in STATIC_TYPES}


class TokenGate:
    """ASGI middleware: the token on every request (see the module's docstring); 401 without it, 403 for a
    state change from another origin."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    def valid(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope, receive, send) -> None:
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, RedirectResponse

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if "token" in request.query_params:
            if not self.valid(request.query_params["token"]):
                await _unauthorised()(scope, receive, send)
                return
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(same_site_path(scope["path"]) + (f"?{rest}" if rest else ""),
                                        status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token.decode(), httponly=True, samesite="strict", path="/")
            await response(scope, receive, send)
            return
        header = request.headers.get("authorization", "")
        bearer = header[7:] if header[:7].lower() == "bearer " else None
        by_header = self.valid(bearer)
        if not by_header and not self.valid(request.cookies.get(TOKEN_COOKIE)):
            await _unauthorised()(scope, receive, send)
            return
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if (origin is not None and origin != own) or (origin is None and not by_header):
                await PlainTextResponse(f"refused: a change must come from this page ({own}), not from "
                                        f"{origin or 'a request without an Origin'}\n", 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _unauthorised():
    from starlette.responses import PlainTextResponse

    return PlainTextResponse("this device's page needs its token: open the address `avcil serve` printed "
                             "(http://HOST:PORT/?token=...), or send `Authorization: Bearer TOKEN`\n", 401,
                             headers={"WWW-Authenticate": "Bearer"})


def _error(message: str, status: int = 400):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status)


REFUSAL_STATUS = ((Busy, 409), (BodyTooLarge, 413), (Gone, 404))


def _refusal(error: AvcilError):
    """A refused request's answer: 409 while busy, 413 for a body too large, 404 for what is no longer kept, else
    400."""
    return _error(str(error), next((status for kind, status in REFUSAL_STATUS if isinstance(error, kind)), 400))


def correction_target(data: dict) -> dict:
    """The body of POST /api/not, `{"decision": N}` or `{"event": K}`, as DeviceService.correct's keyword."""
    given = [key for key in ("decision", "event") if key in data]
    if len(given) != 1:
        raise InvalidInput('say what was not X: {"decision": N} or {"event": K}, one of them')
    return {given[0]: check_whole(data[given[0]], given[0], 1)}


def build_app(service: DeviceService, token: str, hosts: set[str]):
    """The Starlette application: the page, the live view, the JSON API, behind HostAllowList (the Host names it
    answers to, and its headers) and TokenGate."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    files = page_files()

    def answer(work, *args, status: int = 200):
        """`work(*args)` as JSON, or its refusal (`_refusal`)."""
        try:
            return JSONResponse(work(*args), status)
        except AvcilError as error:
            return _refusal(error)

    async def change(request, work, status: int = 200):
        """A state change: `work(data)` of the request's JSON object (avcil.runtime.page_json), answered as
        `answer` does, off the event loop (it reads and writes the model dir)."""
        try:
            data = await read_json_object(request)
        except InvalidInput as error:
            return _refusal(error)
        return await asyncio.to_thread(answer, work, data, status=status)

    async def page(request):
        return Response(files["index.html"][0], media_type=files["index.html"][1],
                        headers={"Cache-Control": "no-store"})

    async def static(request):
        found = files.get(request.path_params["name"])
        if found is None:
            return Response("no such file\n", 404, media_type="text/plain")
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "no-store"})

    async def video(request):
        async def frames():
            while not service.stopping.is_set():
                jpeg = await asyncio.to_thread(service.frame_jpeg)
                if jpeg is not None:
                    yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
                           + b"\r\n\r\n" + jpeg + b"\r\n")
                await asyncio.sleep(1 / MJPEG_FPS)

        return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame",
                                 headers={"Cache-Control": "no-store"})

    async def status(request):
        return JSONResponse(service.status())

    async def decisions(request):
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            return _error("after must be a decision number (an integer)")
        return JSONResponse({"decisions": service.decisions.after(after), "last": service.decisions.count})

    async def detections(request):
        """The recognition events (avcil.runtime.events) closed after `?after=N`, and the one under way. Not
        /api/events: that is the decisions' stream of server-sent events."""
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            return _error("after must be an event number (an integer)")
        return JSONResponse(service.events.after(after))

    async def events(request):
        """Server-sent events: each decision after `Last-Event-ID` (a reconnecting EventSource) or `?after=N`."""
        try:
            after = int(request.headers.get("last-event-id") or request.query_params.get("after", "0"))
        except ValueError:
            return _error("after must be a decision number (an integer)")

        async def stream():
            seen = after
            yield "retry: 1000\n\n"
            while not service.stopping.is_set():
                for decision in service.decisions.after(seen):
                    seen = decision["n"]
                    yield f"id: {seen}\nevent: decision\ndata: {json.dumps(decision)}\n\n"
                await asyncio.sleep(EVENT_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def learn(request):
        if request.method == "GET":
            return JSONResponse(service.job.snapshot())
        return await change(request, lambda data: service.learn(
            check_label(data.get("label")), check_whole(data.get("clips", DEFAULT_CLIPS), "clips", 1, MAX_CLIPS),
            check_number(data.get("countdown", 3.0), "countdown", 0, MAX_COUNTDOWN_S),
            check_flag(data.get("drop_suspect", False), "drop_suspect")), status=202)

    async def versions(request):
        return answer(lambda: {"versions": service.versions(), "current": service.model.current()})

    async def rollback(request):
        return await change(request, lambda data: service.rollback(check_version_name(data.get("version"))))

    async def correction(request):
        """"That was not X": {"decision": N} or {"event": K}."""
        return await change(request, lambda data: service.correct(**correction_target(data)))

    routes = [Route("/", page), Route("/static/{name}", static), Route("/video.mjpg", video),
              Route("/api/status", status), Route("/api/decisions", decisions), Route("/api/events", events),
              Route("/api/detections", detections),
              Route("/api/learn", learn, methods=["GET", "POST"]), Route("/api/versions", versions),
              Route("/api/rollback", rollback, methods=["POST"]), Route("/api/not", correction, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(HostAllowList, names=hosts),
                                                Middleware(TokenGate, token=token)])


# The command -----------------------------------------------------------------------------------------------------
def read_token(path: str | None) -> str:
    """The token of --token-file (its one line), or a new random one. A file that others may read is used, with a
    one-line warning: the token is only as secret as the file."""
    if path is None:
        return secrets.token_urlsafe(24)
    try:
        token = Path(path).read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidInput(f"token file {path}: not UTF-8 text; expected one line of at least {MIN_TOKEN_CHARS} "
                           f"characters without spaces") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise InvalidInput(f"token file {path}: expected one line of at least {MIN_TOKEN_CHARS} characters "
                           f"without spaces")
    mode = Path(path).stat().st_mode  # warned about once the token is known to be usable
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"warning: token file {path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
              f"`chmod 600 {path}` keeps the token to its owner", file=sys.stderr)
    return token


def _serve(args: argparse.Namespace) -> int:
    from avcil.runtime.mqtt import mqtt_target

    check_recognition_flags(args)
    check_event_flags(args)
    check_port(args.port)
    token = read_token(args.token_file)
    target = mqtt_target(args)
    listener = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))  # before the model loads: a port in use is one line at once
        listener.listen(128)  # requests that come before uvicorn runs wait in the queue
    except OSError as error:
        listener.close()
        raise InvalidInput(f"cannot listen on {args.host}:{args.port}: {error.strerror}") from None
    port = listener.getsockname()[1]
    try:
        service = DeviceService(args.model, args.camera, args.mic, args.backend, args.device, hop=args.hop,
                                rule={"threshold": args.threshold, "smoothing": args.smoothing, "top_k": args.top_k,
                                      "score": args.score}, event_windows=(args.event_start, args.event_end),
                                mqtt=target)
        try:
            service.start()
            _announce(service, args, port, token)
            app = build_app(service, token, allowed_hosts(args.host, args.allowed_host))
            # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again: as an exception here,
            # so that the sources are closed before the process ends.
            previous = signal.signal(signal.SIGTERM, _terminated)
            try:
                _uvicorn_server(app, service.stopping).run(sockets=[listener])
            except (KeyboardInterrupt, Terminated):
                pass
            finally:
                signal.signal(signal.SIGTERM, previous)
        finally:
            service.stop()
    finally:
        listener.close()
    return 0


def _uvicorn_server(app, stopping: threading.Event):
    """uvicorn's server for `app`, which on SIGINT/SIGTERM also sets `stopping` at once: the open streams (the
    decisions' events, the video) then end within a poll, so the graceful shutdown takes a moment rather than
    running into its timeout and cancelling them."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            stopping.set()
            super().handle_exit(sig, frame)

    return Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, access_log=False))


class Terminated(Exception):
    """SIGTERM, once uvicorn has shut down."""


def _terminated(signum, frame) -> None:
    raise Terminated()


def _announce(service: DeviceService, args: argparse.Namespace, port: int, token: str) -> None:
    """The model on stderr; the page's address (with the token unless it came from a file) on stdout."""
    print(f"model {service.recognizer.version} ({len(service.recognizer.class_names)} classes), encoders on "
          f"{args.backend}", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: the page is reachable from the network, over plain HTTP; it "
              f"answers to {', '.join(sorted(allowed_hosts(args.host, args.allowed_host)))} (--allowed-host adds "
              f"the names it is reached by)", file=sys.stderr)
    where = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{port}/"
    if args.token_file:
        print(f"open {where} with the token of {args.token_file} ({where}?token=...)", flush=True)
    else:
        print(f"open {where}?token={token}", flush=True)


def add_parser(subparsers) -> None:
    from avcil.runtime.mqtt import add_mqtt_flags

    serve = subparsers.add_parser(
        "serve", help="the device's web page: live view, add a class, versions and rollback, behind a token",
        description="Serve the device's page: the camera with the current label, the decisions and their latency, "
                    "the events (a label held over windows; with --mqtt also sent to a broker), a form that records "
                    "and learns a new class from this camera and microphone, \"not X\" on a decision or an event "
                    "(learnt as avcil learn --not does), the model's versions with rollback. "
                    "Every request needs the token (printed at start, or --token-file).")
    add_recognition_flags(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this device "
                       "only; 0.0.0.0 opens the page to the network)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--token-file", metavar="F", help="read the token from this file (default: a new random "
                       "token, printed at start); keep it readable by its owner only")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME", help="a name or address the "
                       "page is reached by, besides the one it listens on and localhost (repeatable); requests "
                       "for any other Host are refused, as a DNS-rebinding site would send")
    add_event_flags(serve)
    add_mqtt_flags(serve)
    serve.set_defaults(func=_serve)
