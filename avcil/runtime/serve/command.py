"""`avcil serve`: its flags, the listening socket (bound before the model loads), the service and uvicorn.

Binds 127.0.0.1 unless --host says otherwise; the token is printed at start or read from --token-file
(avcil.runtime.serve.auth).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

from avcil.errors import InvalidInput
from avcil.runtime.commands import add_event_flags, add_recognition_flags, check_event_flags, check_recognition_flags
from avcil.runtime.inputs import check_port
from avcil.runtime.page_guards import allowed_hosts
from avcil.runtime.serve.auth import read_token
from avcil.runtime.serve.service import DeviceService


def _serve(args: argparse.Namespace) -> int:
    from avcil.runtime.mqtt import mqtt_target
    from avcil.runtime.serve.app import build_app  # Starlette: the serve extra

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
                    "(learnt as avcil learn --not does), a button that learns a stretch of this place as background "
                    "(as avcil learn --background --minutes does), the model's versions with rollback. "
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
