"""The avcil command line as a user runs it (a subprocess) or in process, and what a user would object to in what it
answers."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

TREE = str(Path(__file__).resolve().parents[2])  # the checkout, as PYTHONPATH for a fresh `avcil` process


def avcil(*args: str, env: dict | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run the avcil command line in a subprocess, as a user would."""
    result = subprocess.run([sys.executable, "-m", "avcil.cli", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"avcil {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


def run_command(argv: list[str], in_process: bool) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `avcil ARGV`; an exception escaping main() is a traceback on stderr, 99."""
    if not in_process:
        result = subprocess.run([sys.executable, "-m", "avcil", *argv], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PYTHONPATH": TREE})
        return result.returncode, result.stdout, result.stderr
    from avcil.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
        except BaseException:  # noqa: BLE001 - what the user would see as a traceback
            err.write(traceback.format_exc())
            code = 99
    return code, out.getvalue(), err.getvalue()


def problems_of(argv: list[str], code: int, stderr: str) -> list[str]:
    """What a user would object to: a traceback, an exit code other than 0 or 2, an error of more than one line."""
    command = " ".join(argv[:2] if argv[0] == "model" else argv[:1])
    if "Traceback" in stderr or code not in (0, 2):
        return [f"`avcil {command}` exited {code}:\n{stderr[-3000:]}"]
    errors = [line for line in stderr.splitlines() if line.startswith(f"avcil {command.split()[0]}: error:")]
    if code == 2 and (len(errors) != 1 or stderr.rstrip().splitlines()[-1] != errors[0]):
        return [f"`avcil {command}` exited 2 without one closing error line:\n{stderr[-3000:]}"]
    return []


def tree_digest(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (without following links): a file's sha256, a link's target, or 'dir'."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            found[name] = "link -> " + os.readlink(path)
        elif path.is_dir():
            found[name] = "dir"
        else:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def read_lines(path: Path) -> list[dict]:
    """The JSON lines a run has written to `path` so far (none while the file does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
