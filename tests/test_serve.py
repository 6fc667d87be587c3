"""`avcil serve`, the device's web page, against real parts: the server as a user starts it, the PulseAudio null sink
`vmic` as its microphone, the ffmpeg MJPEG camera on 127.0.0.1 (conftest.py), and a real headless Chromium driven
by selenium that uses the page as a person would."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from avcil.cli import main
from avcil.modeldir import ModelDir
from support.media import TOY_CLASSES, make_clip, playing_tone
from support.servers import Broker, Listener, Server
from support.waiting import listening_addresses, wait_until

ROOT = Path(__file__).resolve().parents[1]
# Every endpoint: all answer 401 without the token.
ENDPOINTS = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/static/style.css"), ("GET", "/video.mjpg"),
             ("GET", "/api/status"), ("GET", "/api/decisions?after=0"), ("GET", "/api/events"),
             ("GET", "/api/detections?after=0"),
             ("GET", "/api/learn"), ("GET", "/api/versions"), ("POST", "/api/learn"), ("POST", "/api/rollback"),
             ("POST", "/api/not")]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1100"]


@pytest.fixture
def servers():
    started: list[Server] = []

    def start(*args, **kwargs) -> Server:
        started.append(Server(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def test_the_page_needs_its_token_and_refuses_changes_from_another_origin(tmp_path, toy_model, toy_clips,
                                                                          pulse_env, mjpeg_camera, servers):
    camera = mjpeg_camera(toy_clips["red"][0])
    server = servers(toy_model, camera.url, pulse_env)  # no --token-file: a random token, printed
    printed = re.fullmatch(rf"open http://127\.0\.0\.1:{server.port}/\?token=([\w-]+)", server.address)
    assert printed, server.address
    token = printed.group(1)
    assert len(token) >= 32
    assert listening_addresses(server.port) == {"0100007F"}  # 127.0.0.1 only

    for method, path in ENDPOINTS:
        assert server.request(method, path)[0] == 401, (method, path)
        assert server.request(method, path, token="x" * len(token))[0] == 401, (method, path)
        assert server.request(method, path, headers={"Cookie": f"avcil_token={token[:-1]}"})[0] == 401
    assert server.request("GET", "/api/status?token=wrong")[0] == 401

    # ?token= once: a cookie, HttpOnly and SameSite=Strict, and the same address without the token.
    status, headers, _ = server.request("GET", f"/?token={token}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"avcil_token={token};")
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    by_cookie = {"Cookie": f"avcil_token={token}"}
    status, _, page = server.request("GET", "/", headers=by_cookie)
    assert status == 200 and b"Add a class" in page

    live = server.wait(token, lambda s: s["decisions"] >= 2, what="decisions")
    assert {"version", "classes", "decisions", "backend"} <= set(live)
    assert (live["version"], live["classes"], live["backend"]) == ("v0001", ["red", "blue"], "torch")
    status, feed = server.api("GET", "/api/decisions?after=0", token)
    numbers = [d["n"] for d in feed["decisions"]]
    assert status == 200 and numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 2
    assert server.api("GET", f"/api/decisions?after={numbers[-1] + 1000}", token)[1]["decisions"] == []
    status, headers, events = server.request("GET", f"/api/events?after={numbers[-1] - 1}", token=token, read=300)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert f"id: {numbers[-1]}\nevent: decision\ndata: {{".encode() in events
    status, headers, stream = server.request("GET", "/video.mjpg", token=token, read=8000)
    assert status == 200 and headers["content-type"].startswith("multipart/x-mixed-replace")
    assert stream.startswith(b"--frame\r\nContent-Type: image/jpeg") and b"\xff\xd8" in stream

    # State changes: from another origin, or by the cookie alone without an Origin, refused and nothing done.
    learn = {"label": "yellow", "clips": 1, "countdown": 0}
    assert server.request("POST", "/api/learn", learn, {**by_cookie, "Origin": "http://evil.example"})[0] == 403
    assert server.request("POST", "/api/learn", learn, by_cookie)[0] == 403
    assert server.request("POST", "/api/rollback", {"version": "v0001"},
                          {"Origin": "http://evil.example"}, token=token)[0] == 403
    assert server.request("POST", "/api/not", {"decision": 1}, {**by_cookie, "Origin": "http://evil.example"})[0] == 403
    assert server.api("GET", "/api/learn", token)[1]["state"] == "idle"
    assert server.request("GET", "/api/rollback", token=token)[0] == 405

    # Only the page's own files: no way out of /static/ to the package, the model dir or the file system.
    for path in ["/static/../serve.py", "/static/..%2Fserve.py", "/static/%2e%2e%2f%2e%2e%2fmodeldir.py",
                 "/static/index.html/..", "/../../etc/passwd", "/model/CURRENT", "/versions/v0001/manifest.json",
                 f"/static/{'..%2F' * 8}etc%2Fpasswd", "/static/web"]:
        status, _, body = server.request("GET", path, token=token)
        assert status == 404 and b"root:" not in body and b"import" not in body, (path, status, body[:80])

    # Bad requests: one clear message each, nothing recorded.
    for body, message in [({"label": "red"}, "already in the model"), ({"label": " "}, "needs a name"),
                          ({"label": "x", "clips": 0}, "clips must be a whole number from 1 to 60"),
                          ({"label": "x", "clips": "3"}, "clips must be a whole number"),
                          ({"label": "x", "drop_suspect": "yes"}, "drop_suspect must be true or false"),
                          ("not json", "not JSON")]:
        status, answer = server.api("POST", "/api/learn", token, body)
        assert status == 400 and message in answer["error"], (body, answer)
    # "Not X" refused: what is not kept, what is not one decision or event, a model without the analytic readout
    # (this one), each one message, the path of the model dir in none; nothing learnt.
    gone = server.api("GET", "/api/status", token)[1]["decisions"] + 10**6
    for body, code, message in [({"decision": gone}, 404, f"decision {gone} is no longer kept"),
                                ({"event": 7}, 404, "event 7 is no longer kept"),
                                ({}, 400, 'say what was not X: {"decision": N} or {"event": K}'),
                                ({"decision": 1, "event": 1}, 400, "say what was not X"),
                                ({"decision": "1"}, 400, "decision must be a whole number"),
                                ({"decision": 1}, 400, "the model dir: a correction is learnt by the analytic "
                                                       "readout")]:
        status, answer = server.api("POST", "/api/not", token, body)
        assert status == code and message in answer["error"] and str(toy_model) not in answer["error"], (body, answer)

    # A silent microphone (nothing plays into vmic), then a stalled camera: named, and the model is unchanged.
    # While the first records, a correction waits its turn.
    assert server.api("POST", "/api/learn", token, learn)[0] == 202
    status, answer = server.api("POST", "/api/not", token, {"decision": 2})
    assert status == 409 and answer["error"] == "class 'yellow' is being learnt; wait until it is done", answer
    job = server.wait_job(token)
    assert job["state"] == "failed" and "microphone 'pulse' recorded only silence" in job["message"], job
    camera.stop()

    def camera_marked_missing() -> bool:
        decisions = server.api("GET", "/api/decisions?after=0", token)[1]["decisions"]
        return bool(decisions) and decisions[-1]["video_missing"]

    wait_until(camera_marked_missing, 30, "the server's decisions to say the stopped camera's video is missing")
    with playing_tone(tmp_path, pulse_env, "red"):
        assert server.api("POST", "/api/learn", token, learn)[0] == 202
        job = server.wait_job(token)
    assert job["state"] == "failed" and f"camera '{camera.url}' delivered no frame" in job["message"], job
    versions = server.api("GET", "/api/versions", token)[1]
    assert [v["version"] for v in versions["versions"]] == ["v0001"] and versions["current"] == "v0001"
    assert server.stop() == 0, server.stderr()
    assert "Traceback" not in server.stderr()


def test_a_bad_token_file_or_model_dir_is_one_line(tmp_path, capsys):
    short = tmp_path / "token"
    short.write_text("abc\n")
    assert main(["serve", "--model", str(tmp_path), "--camera", "0", "--mic", "pulse", "--port", "0",
                 "--token-file", str(short)]) == 2
    assert capsys.readouterr().err.strip() == (f"avcil serve: error: token file {short}: expected one line of at "
                                               f"least 16 characters without spaces")
    assert main(["serve", "--model", str(tmp_path / "none"), "--camera", "0", "--mic", "pulse", "--port", "0"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("avcil serve: error: ") and "none" in error[0], error


def test_what_not_x_learns_from_is_kept_for_the_recent_decisions_only():
    """The decisions by number while kept; their windows' features within both bounds, the oldest going first."""
    import numpy as np

    from avcil.runtime.serve import DecisionLog, WindowFeatures

    log = DecisionLog(keep=3)
    for k in range(5):
        assert log.add({"label": "red", "window": [k, k + 1.0]}) == k + 1
    assert [log.get(n) is not None for n in range(7)] == [False, False, False, True, True, True, False]
    log.mark([2, 4], corrected="v0002")
    assert log.get(4)["corrected"] == "v0002" and "corrected" not in log.get(5)
    assert [d["n"] for d in log.within(3.0, 5.0)] == [4, 5]

    def window(k: int) -> tuple[np.ndarray, np.ndarray]:  # 200 + 800 bytes
        return np.full((1, 50), k, np.float32), np.full((1, 2, 2, 50), k, np.float32)

    by_count, by_bytes = WindowFeatures(keep=4, budget=10**6), WindowFeatures(keep=600, budget=3000)
    for k in range(1, 8):
        by_count.add(k, *window(k))
        by_bytes.add(k, *window(k))
    assert (by_count.oldest, by_bytes.oldest, by_bytes.bytes) == (4, 5, 3000)
    numbers, audio, visual = by_bytes.rows([3, 5, 7])
    assert numbers == [5, 7] and audio[:, 0].tolist() == [5, 7] and visual.shape == (2, 2, 2, 50)
    assert by_bytes.rows([1, 2]) == ([], None, None)


def chromium(profile_dir: Path):
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # what the page's console says (CSP refusals)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_a_person_watches_adds_a_class_and_rolls_back_from_the_page(tmp_path, toy_model, toy_clips, pulse_env,
                                                                    mjpeg_camera, servers):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    token = "t0ken-" + "x" * 26
    (tmp_path / "token").write_text(token + "\n")
    camera = mjpeg_camera(toy_clips["green"][0])
    browser = chromium(tmp_path / "chromium-profile")
    try:
        with playing_tone(tmp_path, pulse_env, "green", seconds=150):
            server = servers(toy_model, camera.url, pulse_env, "--token-file", str(tmp_path / "token"))
            assert token not in server.address
            wait = WebDriverWait(browser, 60, poll_frequency=0.1)
            text = lambda element_id: browser.find_element(By.ID, element_id).text  # noqa: E731

            def feed() -> list[tuple[str, str]]:
                """The feed's rows, newest first: (label, version), read at once (rows come and go meanwhile)."""
                return browser.execute_script("return Array.from(document.querySelectorAll('#decisions li'), "
                                              "row => [row.dataset.label, row.textContent.split(' ').pop()])")

            def versions() -> list[tuple[str, str]]:
                """The versions table, newest first: (version, the row's text)."""
                return browser.execute_script("return Array.from(document.querySelectorAll('#versions tbody tr'), "
                                              "row => [row.dataset.version, row.textContent])")

            def labels_of(version: str) -> list[str]:
                return [label for label, seen in feed() if seen == version]

            browser.get(f"http://127.0.0.1:{server.port}/?token={token}")
            assert browser.current_url == f"http://127.0.0.1:{server.port}/"  # the token is gone from the address
            wait.until(lambda b: len(feed()) >= 3)
            assert text("version") == "v0001" and text("classes") == "red, blue"
            assert text("label") in ("red", "blue")  # what the model says of a class it does not know yet
            assert browser.execute_script("return document.getElementById('camera').naturalWidth") > 0
            # The page lives under its Content-Security-Policy: its legend is drawn by script, and nothing of it
            # was refused.
            swatches = browser.execute_script("return Array.from(document.querySelectorAll('#legend i'), "
                                              "i => getComputedStyle(i).backgroundColor)")
            assert len(swatches) == 6 and "rgb(143, 180, 232)" in swatches, swatches
            refused = [entry["message"] for entry in browser.get_log("browser")
                       if "Content Security Policy" in entry["message"]]
            assert not refused, refused

            def learn(label: str, clips: int, countdown: float) -> list[str]:
                """Fill the form, submit, and note each line the page shows until the job ends."""
                for field, value in (("learn-label", label), ("learn-clips", clips), ("learn-countdown", countdown)):
                    element = browser.find_element(By.ID, field)
                    element.clear()
                    element.send_keys(str(value))
                browser.find_element(By.ID, "learn-start").click()
                seen = []
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    state, line = browser.execute_script("const line = document.getElementById('learn-state'); "
                                                         "return [line.dataset.state, line.textContent]")
                    if not seen or seen[-1] != line:
                        seen.append(line)
                    if state in ("live", "failed"):
                        return seen
                    time.sleep(0.05)
                raise AssertionError(f"learning {label!r} did not finish: {seen}")

            refused = learn("red", 1, 0)
            assert "class 'red' is already in the model" in refused[-1], refused
            assert [version for version, _ in versions()] == ["v0001"]

            shown = learn("green", 4, 1)
            assert shown[-1].startswith("'green' learnt from 4 clips") and shown[-1].endswith("v0002 is live"), shown
            for clip in range(1, 5):
                assert f"clip {clip}/4: recording 1.3 s" in shown, shown
            assert any(line.startswith("clip 1/4 in 1") for line in shown), shown
            wait.until(lambda b: text("version") == "v0002")
            assert text("classes") == "red, blue, green"
            wait.until(lambda b: [version for version, _ in versions()] == ["v0002", "v0001"])
            assert "learnt 'green' in the field from 4 clips" in versions()[0][1]
            wait.until(lambda b: len(labels_of("v0002")) >= 6)
            green = labels_of("v0002")
            assert green.count("green") >= 0.8 * len(green), green
            wait.until(lambda b: text("label") == "green")
            browser.save_screenshot(str(tmp_path / "serve-page.png"))

            # Roll back from the page: a confirmation first, then the old version decides again.
            browser.find_element(By.CSS_SELECTOR, "#versions tr[data-version=v0001] button.rollback").click()
            confirm = wait.until(lambda b: b.switch_to.alert)
            assert "Make v0001 the current version?" in confirm.text
            confirm.accept()
            wait.until(lambda b: text("version") == "v0001" and text("classes") == "red, blue")
            wait.until(lambda b: [version for _, version in feed()[:3]] == ["v0001"] * 3)
            assert text("label") in ("red", "blue")
        assert server.stop() == 0, server.stderr()
    finally:
        browser.quit()
    assert (tmp_path / "serve-page.png").stat().st_size > 10_000
    if os.environ.get("AVCIL_KEEP_SCREENSHOT"):  # for a person to look at: benchmarks/results/serve-page.png
        shutil.copy(tmp_path / "serve-page.png", ROOT / "benchmarks" / "results" / "serve-page.png")


def test_the_page_shows_the_events_under_way_and_done_and_mqtt_gets_them_too(tmp_path, toy_model, servers):
    """File sources (a red clip, then a blue one) through `avcil serve --mqtt`: the page shows each event under way,
    then the two events done; the broker gets the same two."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait


    broker = Broker(tmp_path / "broker").start()
    listener = Listener(broker.port, "avcil/page/#")
    clips = [make_clip(tmp_path / f"{name}.mp4", *TOY_CLASSES[name], seconds=5.0) for name in ("red", "blue")]
    files = ",".join(map(str, clips))
    token = "t0ken-" + "y" * 26
    (tmp_path / "token").write_text(token + "\n")
    browser = chromium(tmp_path / "chromium-profile")
    try:
        server = servers(toy_model, files, {}, "--token-file", str(tmp_path / "token"), "--event-start", "2",
                         "--event-end", "2", "--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--mqtt-device-id", "page",
                         mic=files)
        browser.get(f"http://127.0.0.1:{server.port}/?token={token}")
        wait = WebDriverWait(browser, 60, poll_frequency=0.1)
        ongoing = lambda: browser.find_element(By.ID, "ongoing").text  # noqa: E731
        wait.until(lambda b: ongoing().startswith("under way: red since "))
        assert "MQTT mqtt://127.0.0.1" in browser.find_element(By.ID, "mqtt").text
        wait.until(lambda b: ongoing().startswith("under way: blue since "))

        def rows() -> list[list[str]]:
            return browser.execute_script("return Array.from(document.querySelectorAll('#detections tbody tr'), "
                                          "row => Array.from(row.cells, cell => cell.textContent))")

        wait.until(lambda b: [row[0] for row in rows()] == ["blue", "red"])  # newest first, once the files ended
        wait.until(lambda b: ongoing() == "no event under way")
        for label, start, end, peak, windows, correct in rows():
            assert correct == f"not {label}"
            assert re.fullmatch(r"\d\.\d\d", peak) and int(windows) >= 2 and ":" in start and ":" in end
        done = server.api("GET", "/api/detections?after=0", token)[1]
        assert [e["n"] for e in done["detections"]] == [1, 2] and done["ongoing"] is None and done["last"] == 2
        assert server.api("GET", "/api/detections?after=1", token)[1]["detections"] == done["detections"][1:]
        listener.wait(lambda l: len(l.on("avcil/page/event")) == 2, what="the two events over MQTT")
        published = listener.on("avcil/page/event")
        assert [(e["label"], e["start"], e["end"]) for e in published] == [
            (e["label"], e["start"], e["end"]) for e in done["detections"]]
        assert server.api("GET", "/api/status", token)[1]["mqtt"]["state"] == "closed"
        assert server.stop() == 0, server.stderr()
        assert "Traceback" not in server.stderr()
    finally:
        browser.quit()
        listener.close()
        broker.kill()


def test_not_x_on_the_page_makes_what_it_decided_unknown(tmp_path, analytic_model, toy_clips, pulse_env, mjpeg_camera,
                                                         servers):
    """A green clip, none of the classes, that the model labels red or blue (softmax, threshold 0): "not X" beside
    the current label commits a new version, after which the clip's windows are unknown (rejected); the event they
    made closes, and "not X" on its row corrects the rest of its windows."""
    from selenium.webdriver.support.ui import WebDriverWait

    token = "t0ken-" + "z" * 26
    (tmp_path / "token").write_text(token + "\n")
    camera = mjpeg_camera(toy_clips["green"][0])
    browser = chromium(tmp_path / "chromium-profile")
    # Clicks the first "not X" button under `selector` at once (the current decision's is replaced every hop):
    # [its text, its decision, its event], or null where there is none.
    click = ("const button = document.querySelector(arguments[0] + ' button.not'); if (!button) return null; "
             "button.click(); return [button.textContent, button.dataset.decision, button.dataset.event];")
    try:
        with playing_tone(tmp_path, pulse_env, "green", seconds=150):
            server = servers(analytic_model, camera.url, pulse_env, "--token-file", str(tmp_path / "token"))
            browser.get(f"http://127.0.0.1:{server.port}/?token={token}")
            wait = WebDriverWait(browser, 60, poll_frequency=0.1)

            def job_line() -> tuple[str, str]:
                return browser.execute_script("const line = document.getElementById('learn-state'); "
                                              "return [line.dataset.state, line.textContent]")

            def decisions_after(n: int) -> list[dict]:
                return server.api("GET", f"/api/decisions?after={n}", token)[1]["decisions"]

            server.wait(token, lambda s: s["decisions"] >= 3, what="decisions")
            text, number, _ = wait.until(lambda b: b.execute_script(click, "#not-current"))
            mistaken, number = text.removeprefix("not "), int(number)
            assert mistaken in ("red", "blue") and decisions_after(number - 1)[0]["label"] == mistaken
            state, line = wait.until(lambda b: job_line()[0] in ("live", "failed") and job_line())
            assert state == "live" and line == (f"'{mistaken}' corrected: v0002 (1 window of decision {number} "
                                                f"learnt as not '{mistaken}')"), line
            assert not browser.execute_script(f"return document.querySelector('[data-decision=\"{number}\"]')")
            assert decisions_after(number - 1)[0]["corrected"] == "v0002"
            versions = server.api("GET", "/api/versions", token)[1]
            assert versions["current"] == "v0002" and f"not '{mistaken}'" in versions["versions"][-1]["note"]

            # From v0002 on, the green clip's windows are unknown, and the page offers nothing to correct.
            server.wait(token, lambda s: len([d for d in decisions_after(number) if d["model_version"] == "v0002"])
                        >= 4, what="decisions of v0002")
            after = [d for d in decisions_after(number) if d["model_version"] == "v0002"]
            assert all(d["label"] == "unknown" and d["rejected"] for d in after), after
            wait.until(lambda b: b.execute_script("return document.getElementById('label').textContent") == "unknown")
            assert browser.execute_script("return document.querySelector('#not-current button') === null")
            for body, message in [({"decision": after[0]["n"]}, f"decision {after[0]['n']} is unknown: nothing to "
                                                                 f"correct"),
                                  ({"decision": number}, f"decision {number} was already corrected (v0002)")]:
                status, answer = server.api("POST", "/api/not", token, body)
                assert status == 400 and answer["error"] == message, answer

            # The event the mistaken windows made has closed; "not X" on its row learns its other windows.
            text, _, event = wait.until(lambda b: b.execute_script(click, "#detections"))
            label, event = text.removeprefix("not "), int(event)
            state, line = wait.until(lambda b: job_line()[1].startswith(f"'{label}' corrected: v0003") and job_line())
            assert state == "live" and line.endswith(f"of event {event} learnt as not '{label}')"), line
            assert not browser.execute_script(f"return document.querySelector('[data-event=\"{event}\"]')")
            status, answer = server.api("POST", "/api/not", token, {"event": event})
            assert status == 400 and answer["error"] == f"event {event} was already corrected (v0003)", answer
            server.wait(token, lambda s: s["version"] == "v0003", what="v0003")
        assert server.stop() == 0, server.stderr()
        assert "Traceback" not in server.stderr()
    finally:
        browser.quit()


def test_the_page_learns_a_stretch_of_this_place_as_background(tmp_path, analytic_model, toy_clips, servers):
    """"Learn this place as background" on the page: the stretch's windows recorded from the device's own sources
    (a green clip, none of the classes, as camera and microphone), learnt as background, live as a new version; a
    stretch of no minutes is refused naming the field."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    token = "t0ken-" + "b" * 26
    (tmp_path / "token").write_text(token + "\n")
    green = str(toy_clips["green"][0])
    browser = chromium(tmp_path / "chromium-profile")
    try:
        server = servers(analytic_model, green, {}, "--token-file", str(tmp_path / "token"), mic=green)
        status, refused = server.api("POST", "/api/background", token, {"minutes": 0})
        assert status == 400 and "minutes must be a finite number > 0" in refused["error"], refused
        browser.get(f"http://127.0.0.1:{server.port}/?token={token}")
        wait = WebDriverWait(browser, 90, poll_frequency=0.1)
        minutes = browser.find_element(By.ID, "background-minutes")
        minutes.clear()
        minutes.send_keys("0.1")
        browser.find_element(By.ID, "background-start").click()
        line = lambda: browser.execute_script("const l = document.getElementById('learn-state'); "  # noqa: E731
                                              "return [l.dataset.state, l.textContent]")
        wait.until(lambda b: line()[1].startswith("background: "))  # the stretch's progress, as it records
        state, text = wait.until(lambda b: line()[0] in ("live", "failed") and line())
        assert state == "live" and text.startswith("background learnt from ") and "v0002 is live" in text, text
    finally:
        browser.quit()
    manifest = ModelDir(analytic_model).load(with_memory=False).manifest
    assert manifest["note"].startswith("learnt background from ") and manifest["classes"][0]["name"] == "red"
