"""The page's web application (`build_app`): the page's own files, the live view (MJPEG), the decisions' stream
(server-sent events) and the JSON API under /api/ that the page itself uses, behind HostAllowList and TokenGate.
What is served is the page's files, held in memory by name, and JSON: nothing of the model dir or the file system.
Starlette is imported here only: `avcil serve --help` works without the serve extra.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from avcil.errors import AvcilError, InvalidInput
from avcil.runtime.field_settings import DEFAULT_CLIPS
from avcil.runtime.inputs import check_flag, check_label, check_number, check_version_name, check_whole
from avcil.runtime.page_guards import HostAllowList
from avcil.runtime.page_json import BodyTooLarge, read_json_object
from avcil.runtime.serve.auth import TokenGate
from avcil.runtime.serve.job import Busy, Gone
from avcil.runtime.serve.service import MAX_CLIPS, MAX_COUNTDOWN_S, DeviceService

MJPEG_FPS = 5.0  # the live view: a few frames a second is what a person watching a label needs
EVENT_POLL_S = 0.05  # how often the decision stream looks for new decisions: well under a hop, and cheap
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}


def page_files() -> dict[str, tuple[bytes, str]]:
    """The page's files by name (avcil/runtime/web/, package data), read once: what /static/ can serve."""
    folder = resources.files("avcil.runtime") / "web"
    return {entry.name: (entry.read_bytes(), STATIC_TYPES[Path(entry.name).suffix])
            for entry in folder.iterdir() if Path(entry.name).suffix in STATIC_TYPES}


def error_answer(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status)


REFUSAL_STATUS = ((Busy, 409), (BodyTooLarge, 413), (Gone, 404))


def refusal(error: AvcilError) -> JSONResponse:
    """A refused request's answer: 409 while busy, 413 for a body too large, 404 for what is no longer kept, else
    400."""
    return error_answer(str(error), next((status for kind, status in REFUSAL_STATUS if isinstance(error, kind)), 400))


def answer(work, *args, status: int = 200) -> JSONResponse:
    """`work(*args)` as JSON, or its refusal."""
    try:
        return JSONResponse(work(*args), status)
    except AvcilError as error:
        return refusal(error)


async def change(request, work, status: int = 200) -> JSONResponse:
    """A state change: `work(data)` of the request's JSON object (avcil.runtime.page_json), answered as `answer`
    does, off the event loop (it reads and writes the model dir)."""
    try:
        data = await read_json_object(request)
    except InvalidInput as error:
        return refusal(error)
    return await asyncio.to_thread(answer, work, data, status=status)


def number_after(request, what: str, header: str | None = None) -> int:
    """`?after=N` (or the `header`, when sent) as a number: the last decision or event the caller has seen."""
    given = (request.headers.get(header) if header else None) or request.query_params.get("after", "0")
    try:
        return int(given)
    except ValueError:
        raise InvalidInput(f"after must be {what} number (an integer)") from None


def learn_request(data: dict) -> tuple[str, int, float, bool]:
    """The body of POST /api/learn as DeviceService.learn's arguments: (label, clips, countdown, drop_suspect)."""
    return (check_label(data.get("label")), check_whole(data.get("clips", DEFAULT_CLIPS), "clips", 1, MAX_CLIPS),
            check_number(data.get("countdown", 3.0), "countdown", 0, MAX_COUNTDOWN_S),
            check_flag(data.get("drop_suspect", False), "drop_suspect"))


MAX_BACKGROUND_MINUTES = 24 * 60  # a day: a stretch longer than that is better learnt in several


def background_minutes(data: dict) -> float:
    """The body of POST /api/background, `{"minutes": M}`, as DeviceService.learn_background's argument."""
    return check_number(data.get("minutes"), "minutes", 0, MAX_BACKGROUND_MINUTES, above=True)


def correction_target(data: dict) -> dict:
    """The body of POST /api/not, `{"decision": N}` or `{"event": K}`, as DeviceService.correct's keyword."""
    given = [key for key in ("decision", "event") if key in data]
    if len(given) != 1:
        raise InvalidInput('say what was not X: {"decision": N} or {"event": K}, one of them')
    return {given[0]: check_whole(data[given[0]], given[0], 1)}


NO_STORE = {"Cache-Control": "no-store"}


class PageRoutes:
    """The handlers of the page's routes, over one DeviceService and the page's files."""

    def __init__(self, service: DeviceService):
        self.service, self.files = service, page_files()

    def routes(self) -> list[Route]:
        return [Route("/", self.page), Route("/static/{name}", self.static), Route("/video.mjpg", self.video),
                Route("/api/status", self.status), Route("/api/decisions", self.decisions),
                Route("/api/events", self.events), Route("/api/detections", self.detections),
                Route("/api/learn", self.learn, methods=["GET", "POST"]), Route("/api/versions", self.versions),
                Route("/api/rollback", self.rollback, methods=["POST"]),
                Route("/api/not", self.correction, methods=["POST"]),
                Route("/api/background", self.background, methods=["POST"])]

    async def page(self, request) -> Response:
        content, media_type = self.files["index.html"]
        return Response(content, media_type=media_type, headers=NO_STORE)

    async def static(self, request) -> Response:
        found = self.files.get(request.path_params["name"])
        if found is None:
            return Response("no such file\n", 404, media_type="text/plain")
        return Response(found[0], media_type=found[1], headers=NO_STORE)

    async def video(self, request) -> StreamingResponse:
        """The live view: the newest frame with its label, MJPEG_FPS times a second."""
        return StreamingResponse(self._frames(), media_type="multipart/x-mixed-replace; boundary=frame",
                                 headers=NO_STORE)

    async def _frames(self):
        while not self.service.stopping.is_set():
            jpeg = await asyncio.to_thread(self.service.frame_jpeg)
            if jpeg is not None:
                yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
                       + b"\r\n\r\n" + jpeg + b"\r\n")
            await asyncio.sleep(1 / MJPEG_FPS)

    async def status(self, request) -> JSONResponse:
        return JSONResponse(self.service.status())

    async def decisions(self, request) -> JSONResponse:
        decisions = self.service.decisions
        return answer(lambda: {"decisions": decisions.after(number_after(request, "a decision")),
                               "last": decisions.count})

    async def detections(self, request) -> JSONResponse:
        """The recognition events (avcil.runtime.events) closed after `?after=N`, and the one under way. Not
        /api/events: that is the decisions' stream of server-sent events."""
        return answer(lambda: self.service.events.after(number_after(request, "an event")))

    async def events(self, request):
        """Server-sent events: each decision after `Last-Event-ID` (a reconnecting EventSource) or `?after=N`."""
        try:
            after = number_after(request, "a decision", header="last-event-id")
        except InvalidInput as error:
            return refusal(error)
        return StreamingResponse(self._decision_stream(after), media_type="text/event-stream", headers=NO_STORE)

    async def _decision_stream(self, seen: int):
        yield "retry: 1000\n\n"
        while not self.service.stopping.is_set():
            for decision in self.service.decisions.after(seen):
                seen = decision["n"]
                yield f"id: {seen}\nevent: decision\ndata: {json.dumps(decision)}\n\n"
            await asyncio.sleep(EVENT_POLL_S)

    async def learn(self, request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse(self.service.job.snapshot())
        return await change(request, lambda data: self.service.learn(*learn_request(data)), status=202)

    async def versions(self, request) -> JSONResponse:
        return answer(lambda: {"versions": self.service.versions(), "current": self.service.model.current()})

    async def rollback(self, request) -> JSONResponse:
        return await change(request, lambda data: self.service.rollback(check_version_name(data.get("version"))))

    async def background(self, request) -> JSONResponse:
        """A stretch of background: {"minutes": M}; the job says how it goes (GET /api/learn)."""
        return await change(request, lambda data: self.service.learn_background(background_minutes(data)),
                            status=202)

    async def correction(self, request) -> JSONResponse:
        """"That was not X": {"decision": N} or {"event": K}."""
        return await change(request, lambda data: self.service.correct(**correction_target(data)))


def build_app(service: DeviceService, token: str, hosts: set[str]) -> Starlette:
    """The Starlette application: the page, the live view, the JSON API, behind HostAllowList (the Host names it
    answers to, and its headers) and TokenGate."""
    return Starlette(routes=PageRoutes(service).routes(),
                     middleware=[Middleware(HostAllowList, names=hosts), Middleware(TokenGate, token=token)])
