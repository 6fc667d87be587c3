"""Every value a user gives is checked once (avcil/runtime/inputs.py), the same way by the command line and by the
page: a bad one is one line and exit 2, or a 400 whose message names the field, never a traceback or a 500. The
page is `avcil serve` as a user starts it (paced files for camera and microphone), reached over HTTP; its bodies
are also fuzzed."""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from avcil.cli import main
from avcil.runtime.serve import MAX_CLIPS
from support.commands import avcil
from support.servers import Server

TOKEN = "inputs-" + "t" * 25
LONG = "x" * 300
# (value, what the message names): refused by `avcil learn --label` and by the page alike.
BAD_LABELS = [("3 ", "whitespace"), (" 3", "whitespace"), ("a\nb", "unprintable"), ("tab\there", "unprintable"),
              ("bell\x07", "unprintable"), (LONG, "at most 64"), ("", "needs a name"), ("   ", "needs a name"),
              ("unknown", "no class is recognised")]


def one_line_error(argv: list[str], capsys) -> str:
    """The one line `avcil ARGV` writes when it refuses its input with exit 2 (argparse's refusals included)."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"avcil {argv[0]}: error: "), lines
    return lines[0]


# The command line ---------------------------------------------------------------------------------------------------
RUN = ["run", "--model", "no-model-needed", "--camera", "cam.mp4", "--mic", "mic.wav"]


@pytest.mark.parametrize("flags, field", [
    (["--top-k", "0"], "top-k"), (["--top-k", "-3"], "top-k"), (["--top-k", "two"], "--top-k"),
    (["--hop", "0"], "--hop"), (["--hop", "-1"], "--hop"), (["--hop", "nan"], "--hop"), (["--hop", "inf"], "--hop"),
    (["--smoothing", "0"], "smoothing"), (["--smoothing", "1.5"], "--smoothing"),
    (["--threshold", "nan"], "threshold"), (["--score", "softmax", "--threshold", "2"], "threshold"),
    (["--threshold", "1e400"], "threshold"), (["--score", "mahalanobis", "--threshold", "-inf"], "threshold"),
    (["--duration", "-5"], "--duration"), (["--duration", "0"], "--duration"), (["--duration", "nan"], "--duration"),
    (["--slot", "-1"], "--slot"), (["--threads", "-2"], "--threads"), (["--score", "cosine"], "--score")])
def test_run_refuses_bad_numbers_in_one_line_before_loading_anything(flags, field, capsys):
    line = one_line_error([*RUN, *flags], capsys)
    assert field in line, line


@pytest.mark.parametrize("flags, field", [(["--port", "70000"], "--port"), (["--port", "-1"], "--port"),
                                          (["--hop", "0"], "--hop"), (["--top-k", "0"], "top-k")])
def test_serve_refuses_bad_numbers_in_one_line(flags, field, capsys):
    line = one_line_error(["serve", "--model", "no-model-needed", "--camera", "0", "--mic", "pulse", *flags], capsys)
    assert field in line, line


@pytest.mark.parametrize("label, said", BAD_LABELS, ids=[repr(label)[:12] for label, _ in BAD_LABELS])
def test_learn_refuses_a_bad_label_in_one_line(label, said, capsys):
    line = one_line_error(["learn", "--model", "no-model-needed", "--label", label, "--files", "a.mp4"], capsys)
    assert "--label" in line and said in line, line


@pytest.mark.parametrize("flags, field", [(["--clips", "0"], "--clips"), (["--countdown", "nan"], "--countdown"),
                                          (["--countdown", "-1"], "--countdown"), (["--epochs", "0"], "--epochs")])
def test_learn_refuses_bad_numbers_in_one_line(flags, field, capsys):
    line = one_line_error(["learn", "--model", "no-model-needed", "--label", "doorbell", "--camera", "0", "--mic",
                           "pulse", *flags], capsys)
    assert field in line, line


def test_a_label_at_the_limit_is_learnt(toy_model, toy_clips):
    label = "a longest name: " + "z" * 48  # 64 printable characters, spaces inside
    learnt = avcil("learn", "--model", toy_model, "--label", label, "--files", *toy_clips["green"][:3], "--json")
    assert json.loads(learnt.stdout.splitlines()[-1])["label"] == label


def test_a_token_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    token = tmp_path / "token"
    token.write_bytes(b"\xff\xfe" + b"\x80" * 30)
    line = one_line_error(["serve", "--model", str(tmp_path), "--camera", "0", "--mic", "pulse", "--port", "0",
                           "--token-file", str(token)], capsys)
    assert line == (f"avcil serve: error: token file {token}: not UTF-8 text; expected one line of at least 16 "
                    f"characters without spaces")


# The page -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page(tmp_path_factory, toy_model_template, toy_clips):
    """`avcil serve` on paced files, its token in a file that others may read, answering to device.local too."""
    root = tmp_path_factory.mktemp("page")
    model = Path(shutil.copytree(toy_model_template, root / "model"))
    (root / "token").write_text(TOKEN + "\n")
    os.chmod(root / "token", 0o644)
    clip = str(toy_clips["red"][0])
    server = Server(model, clip, {}, "--token-file", str(root / "token"), "--allowed-host", "device.local", mic=clip)
    yield server
    server.stop()


def test_a_token_file_others_can_read_is_warned_about_in_one_line(page):
    warned = [line for line in page.stderr().splitlines() if "token file" in line]
    assert len(warned) == 1 and "can be read by other users (mode 0644)" in warned[0] and "chmod 600" in warned[0]


@pytest.mark.parametrize("body, field", [
    *[({"label": label}, "label") for label, _ in BAD_LABELS],
    ({"label": 3}, "label"), ({"label": ["x"]}, "label"),
    ({"label": "x", "clips": 0}, "clips"), ({"label": "x", "clips": -1}, "clips"),
    ({"label": "x", "clips": 2.5}, "clips"), ({"label": "x", "clips": "3"}, "clips"),
    ({"label": "x", "clips": True}, "clips"), ({"label": "x", "clips": MAX_CLIPS + 1}, "clips"),
    ({"label": "x", "clips": 10 ** 400}, "clips"), ({"label": "x", "countdown": -1}, "countdown"),
    ({"label": "x", "countdown": 11}, "countdown"), ({"label": "x", "countdown": None}, "countdown"),
    ('{"label": "x", "clips": NaN}', "finite"), ('{"label": "x", "clips": Infinity}', "finite"),
    ('{"label": "x", "clips": -Infinity}', "finite"), ('{"label": "x", "clips": 1e400}', "finite"),
    ('{"label": "x", "countdown": -1e999}', "finite"),
    ("[" * 2000 + "]" * 2000, "nested"), ('{"label": ' + "[" * 10 + "]" * 10 + "}", "nested"),
    ("not json", "not JSON"), ("[1, 2]", "JSON object"), (b"\xff\xfe{}", "not JSON")])
def test_the_page_refuses_a_bad_learn_request_with_400_naming_the_field(page, body, field):
    status, answer = page.api("POST", "/api/learn", TOKEN, body)
    assert status == 400 and field in answer["error"], (body if len(str(body)) < 80 else str(body)[:80], answer)


@pytest.mark.parametrize("body", [{"version": "v" * 4000}, {"version": 1}, {"version": ""}, {"version": "v\n1"},
                                  {}, '{"version": NaN}'])
def test_the_page_refuses_a_bad_version_name_with_400(page, body):
    status, answer = page.api("POST", "/api/rollback", TOKEN, body)
    assert status == 400 and ("version" in answer["error"] or "finite" in answer["error"]), answer
    assert page.api("GET", "/api/versions", TOKEN)[1]["current"] == "v0001"


def test_a_body_over_the_limit_is_413_without_being_read_whole(page):
    status, _, data = page.request("POST", "/api/learn", json.dumps({"label": "x" * 5000}), token=TOKEN)
    assert status == 413 and "4096" in json.loads(data)["error"]
    # A client announcing a huge body is answered before it sends it.
    with socket.create_connection(("127.0.0.1", page.port), timeout=10) as client:
        client.sendall(f"POST /api/learn HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{{".encode())
        assert client.recv(200).startswith(b"HTTP/1.1 413")


def test_the_token_redirect_stays_on_the_page(page):
    for path in ["//evil.example/", "/%2F%2Fevil.example/", "/%5Cevil.example/", "/%5C%5Cevil.example/",
                 "///evil.example/x"]:
        status, headers, _ = page.request("GET", f"{path}?token={TOKEN}")
        assert status == 303 and headers["location"].startswith("/evil.example/"), (path, headers["location"])
    assert page.request("GET", f"/static/app.js?token={TOKEN}&v=2")[1]["location"] == "/static/app.js?v=2"


def test_the_page_answers_only_to_its_own_host_names_with_framing_headers(page):
    for host in ["evil.example", f"evil.example:{page.port}", "127.0.0.1.evil.example", "localhost.evil"]:
        status, headers, data = page.request("GET", "/api/status", headers={"Host": host}, token=TOKEN)
        assert status == 421 and b"--allowed-host" in data, (host, status)
        assert headers["x-frame-options"] == "DENY"
    for host in [f"127.0.0.1:{page.port}", f"localhost:{page.port}", "LOCALHOST", f"[::1]:{page.port}",
                 "device.local", f"device.local:{page.port}"]:
        assert page.request("GET", "/api/status", headers={"Host": host}, token=TOKEN)[0] == 200, host
    for path, token in [("/", TOKEN), ("/static/app.js", TOKEN), ("/api/status", None), ("/nothing", TOKEN)]:
        status, headers, _ = page.request("GET", path, token=token)
        assert headers["x-frame-options"] == "DENY", (path, status)
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, policy
        assert "unsafe-inline" not in policy and headers["x-content-type-options"] == "nosniff"


# Fuzz -------------------------------------------------------------------------------------------------------------
class Raw(str):
    """Text written into the body as it is: NaN, Infinity, numbers no float holds."""


RAW = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "9" * 400, "-0", "1E+308", "0.0000001"]
KEYS = ["label", "clips", "countdown", "version", "", "label ", "__proto__", "x" * 200]


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.choice(["str", "int", "float", "raw", "bool", "null", "list", "dict"] if depth < 12 else ["str"])
    if kind == "str":
        alphabet = rng.choice(["abc 3", "\n\t\x00\x1b\u2028\u200b", "éß漢字🙂", "\\\"/'<>&"])
        return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 64, 65, 300, 1500])))
    if kind == "int":
        return rng.choice([0, 1, 3, 20, 21, -1, 2 ** 63, -(2 ** 64), 10 ** rng.randint(1, 500)])
    if kind == "float":
        return rng.choice([0.5, 1.0, 2.5, -3.25, 1e308, 5e-324, 19.999999, 1.0000001])
    if kind == "raw":
        return Raw(rng.choice(RAW))
    if kind in ("bool", "null"):
        return rng.choice([True, False, None])
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3]))]
    return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 3]))}


def dump(value) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def random_body(rng: random.Random) -> bytes:
    shape = rng.random()
    if shape < 0.6:  # an object with the API's keys, most of them
        body = {key: random_value(rng, 1) for key in rng.sample(KEYS, rng.randint(0, 4))}
    elif shape < 0.75:  # anything at all
        body = random_value(rng)
    elif shape < 0.85:  # deep nesting
        depth = rng.choice([5, 50, 900, 1500])
        body = Raw('{"label":' + "[" * depth + "1" + "]" * depth + "}")
    else:  # valid JSON cut short, or bytes that are not text
        text = dump({key: random_value(rng, 1) for key in rng.sample(KEYS, 3)})
        return rng.choice([text[:rng.randint(0, len(text))].encode(), bytes(rng.randrange(256) for _ in range(64))])
    return dump(body).encode()


def test_fuzzed_bodies_never_get_a_server_error(page):
    rng = random.Random(25)
    statuses: dict[int, int] = {}
    for attempt in range(400):
        body = random_body(rng)
        path = rng.choice(["/api/learn", "/api/rollback"])
        status, _, data = page.request("POST", path, body, {"Content-Type": "application/json"}, token=TOKEN)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (attempt, path, body[:200], status, data[:300])
        if status >= 400:
            assert json.loads(data)["error"], (attempt, body[:200], data[:300])
    after = rng.choice(["-1", "1e3", "9" * 5000, "x", "", "0x10", " 1 "])
    assert page.request("GET", f"/api/decisions?after={after}", token=TOKEN)[0] < 500
    assert statuses.get(400, 0) > 300, statuses  # the fuzz reached the checks, not only the size limit
    assert page.api("GET", "/api/versions", TOKEN)[1]["current"] == "v0001"
    assert "Traceback" not in page.stderr()


# Stopping -----------------------------------------------------------------------------------------------------------
def test_sigterm_with_an_open_event_stream_stops_in_about_a_second_without_a_traceback(tmp_path, toy_model,
                                                                                         toy_clips):
    (tmp_path / "token").write_text(TOKEN + "\n")
    os.chmod(tmp_path / "token", 0o600)
    clip = str(toy_clips["blue"][0])
    server = Server(toy_model, clip, {}, "--token-file", str(tmp_path / "token"), mic=clip)
    events = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    events.request("GET", "/api/events?after=0", headers={"Authorization": f"Bearer {TOKEN}"})
    response = events.getresponse()
    assert response.status == 200 and response.read1(100).startswith(b"retry:")  # the stream is open
    video = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    video.request("GET", "/video.mjpg", headers={"Authorization": f"Bearer {TOKEN}"})
    assert video.getresponse().status == 200
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=30)
    took = time.monotonic() - began
    events.close()
    video.close()
    assert server.stop() == 0 and took < 2.0, (took, server.stderr())
    assert "Traceback" not in server.stderr() and "error" not in server.stderr().lower(), server.stderr()
