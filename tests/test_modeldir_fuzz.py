"""A fuzz test of the model dir: copies of a real one damaged at random (flipped bytes, truncations, JSON of the
wrong shape, sealed again as a hostile writer would, links to files and folders outside the copy), then the device
commands run on each through the real command line. Each exits 0 or 2 with one error line, never a traceback;
nothing outside the copy changes; every version a command reported committing loads.

AVCIL_FUZZ_CASES sets the number of damaged copies (default 40; the issue's check ran 500)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest

from avcil.modeldir import ModelDir
from avcil.modeldir.schema import SEAL, seal_of
from support.commands import problems_of, run_command, tree_digest
from support.media import make_clip

CASES = int(os.environ.get("AVCIL_FUZZ_CASES", "40"))
SUBPROCESS_CASES = 3  # the first cases also run through a fresh `avcil` process
WRONG_VALUES = ([], {}, "x", -1, None, 1.5, [{"name": 1}], {"unexpected": True})


def hostile_manifest(data: bytes, rng: random.Random) -> bytes:
    """The manifest with one value replaced by a wrong one (an extra head config key, an exemplar or gram entry that
    is not an object, a key removed, ...), sealed again so that only its shape can refuse it. A manifest damaged
    before (not JSON, not an object) is left as it is."""
    try:
        manifest = json.loads(data)
        return json.dumps(_replace_one_value(manifest, rng)).encode()
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return data


def _replace_one_value(manifest: dict, rng: random.Random) -> dict:
    choice = rng.randrange(7)
    if choice == 0:
        manifest["head"]["config"]["unexpected"] = 1
    elif choice == 1 and manifest.get("exemplars"):
        manifest["exemplars"][rng.randrange(len(manifest["exemplars"]))] = rng.choice(["x", 3, [], None])
    elif choice == 2:
        manifest.pop(rng.choice(["classes", "features", "head", "files", "format", "memory"]), None)
    elif choice == 3:
        manifest["features"]["profile"]["settings"][rng.choice(["audio", "visual"])] = rng.choice(WRONG_VALUES)
    elif choice == 4 and manifest.get("exemplars"):
        entry = manifest["exemplars"][rng.randrange(len(manifest["exemplars"]))]
        entry[rng.choice(["label", "count", "file"])] = rng.choice(WRONG_VALUES + (99, "../../victim/keep.txt"))
    elif choice == 5 and manifest.get("gram"):
        gram = manifest["gram"]
        if gram["rows"] and rng.random() < 0.5:
            entry = gram["rows"][rng.randrange(len(gram["rows"]))]
            entry[rng.choice(["file", "count"])] = rng.choice(WRONG_VALUES + (0, "../../victim/keep.txt"))
        else:
            gram[rng.choice(["base", "rows"])] = rng.choice(WRONG_VALUES + ("../../victim/keep.txt",))
    else:
        key = rng.choice(sorted(manifest))
        manifest[key] = rng.choice(WRONG_VALUES)
    manifest[SEAL] = seal_of(manifest)
    return manifest


def damage(copy: Path, victim: Path, rng: random.Random) -> list[str]:
    """One to three random damages to files and folders of `copy`; what was done, for the failure message."""
    done = []
    for _ in range(rng.randint(1, 3)):
        entries = sorted(p for p in copy.rglob("*") if not p.is_symlink())
        path = rng.choice(entries)
        relative = path.relative_to(copy)
        kind = rng.choice(["flip", "truncate", "shape", "hostile", "not utf-8", "link", "remove"])
        if path.is_dir():
            kind = rng.choice(["link", "remove"])
        if kind == "link":
            # The same content outside the copy, linked in: reading it would pass every checksum.
            outside = victim / f"linked-{len(done)}-{path.name}"
            shutil.copytree(path, outside) if path.is_dir() else shutil.copyfile(path, outside)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            path.symlink_to(outside)
        elif kind == "remove":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        else:
            data = path.read_bytes()
            if kind == "flip" and data:
                at = rng.randrange(len(data))
                data = data[:at] + bytes([data[at] ^ rng.randrange(1, 256)]) + data[at + 1:]
            elif kind == "truncate":
                data = data[:rng.randrange(len(data) + 1)]
            elif kind == "shape":
                data = json.dumps(rng.choice(WRONG_VALUES)).encode()
            elif kind == "hostile" and path.name == "manifest.json":
                data = hostile_manifest(data, rng)
            elif kind == "not utf-8":
                data = b"\xff\xfe\x80" + data[:40]
            path.write_bytes(data)
        done.append(f"{kind} {relative}")
    return done


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("fuzz-clip") / "green.mp4", "0x20b040", 2600)


def test_damaged_model_dirs_are_refused_in_one_line_and_nothing_outside_changes(tmp_path, tiny_model_dir_template,
                                                                               clip):
    rng = random.Random(int(os.environ.get("AVCIL_FUZZ_SEED", "25")))
    found: list[str] = []
    exits = {0: 0, 2: 0}
    for case in range(CASES):
        folder = tmp_path / f"case-{case}"
        copy = Path(shutil.copytree(tiny_model_dir_template, folder / "model"))
        victim = folder / "victim"
        victim.mkdir()
        (victim / "keep.txt").write_text("not the model dir's\n")
        done = damage(copy, victim, rng)
        before = tree_digest(victim)
        reported = []
        model = str(copy)
        commands = [["model", "list", "--model", model], ["model", "list", "--model", model, "--json"],
                    ["run", "--model", model, "--camera", str(clip), "--mic", str(clip), "--duration", "0.2",
                     "--quiet"],
                    ["learn", "--model", model, "--label", f"new{case}", "--files", str(clip), "--nice", "0",
                     "--lock-wait", "0"],
                    ["model", "rollback", "--model", model], ["model", "repair", "--model", model]]
        for argv in commands:
            code, stdout, stderr = run_command(argv, in_process=case >= SUBPROCESS_CASES)
            exits[code] = exits.get(code, 0) + 1
            found += [f"case {case} ({'; '.join(done)}): {p}" for p in problems_of(argv, code, stderr)]
            reported += re.findall(r"-> (v\d{4,})|as (v\d{4,})", stdout) if code == 0 else []
        if tree_digest(victim) != before:
            found.append(f"case {case} ({'; '.join(done)}): files outside the model dir changed")
        for version in {v for pair in reported for v in pair if v}:
            try:
                ModelDir(copy).load(version, with_memory=False)
            except Exception as error:  # noqa: BLE001 - collected for the message
                found.append(f"case {case} ({'; '.join(done)}): reported version {version} does not load: {error}")
    print(f"{CASES} damaged copies: exits {exits}, {len(found)} problems")
    assert not found, "\n\n".join(found[:10])
    assert exits[2] > 0 and exits[0] > 0  # the damage did refuse something, and the commands did work on others
