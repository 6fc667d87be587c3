"""What a model dir's records must hold to be used: `check_manifest` for a version's manifest.json (its shape, its
seal, its head config, its exemplar entries, its statistics files) and `check_pointer` for CURRENT.

Every reader goes through these before it touches a value, so that a damaged or hostile record is a refusal of
that version with one line saying what is wrong, never a TypeError deep inside loading. The manifest carries its
own sha256 (`seal`) over its other keys: a flipped byte that still parses as JSON is refused too. Manifests written
before the seal existed have none and are checked by shape alone.
"""

from __future__ import annotations

import hashlib
import json
import re

from avcil.errors import AvcilError, ModelDirError

VERSION_NAME = re.compile(r"v\d{4,}")
SHA256 = re.compile(r"[0-9a-f]{64}")
# The folders of files that versions share (avcil/modeldir/shared.py), each file named by its sha256 and a suffix:
# one class's exemplars, and the analytic readout's statistics (avcil/modeldir/statistics.py).
EXEMPLARS_DIR, STATISTICS_DIR = "exemplars", "statistics"
SHARED_SUFFIX = {EXEMPLARS_DIR: ".npz", STATISTICS_DIR: ".npy"}
SHARED_NAME = {folder: re.compile(SHA256.pattern + re.escape(suffix)) for folder, suffix in SHARED_SUFFIX.items()}
EXEMPLAR_NAME, STATISTICS_NAME = SHARED_NAME[EXEMPLARS_DIR], SHARED_NAME[STATISTICS_DIR]
HEAD_FILE, MEMORY_FILE, MANIFEST_FILE = "head.pt", "memory.npz", "manifest.json"
VERSION_FILES = (HEAD_FILE, MEMORY_FILE)
# 1: the whole memory in the version's memory.npz; 2: shared per-class exemplar files; 3: the analytic readout's
# Gram matrix in shared statistics files, a version storing the rows it added (before 3 it is inside head.pt).
FORMATS = (1, 2, 3)
SEAL = "manifest_sha256"
POINTER_LIMIT = 64  # bytes: "v0001\n" and room for many more versions
GRAM_PARTS = ("audio", "video")  # the analytic readout's per-modality readouts (avcil/model/readout.py)
MANIFEST_LIMIT = 16 << 20  # bytes: a manifest is a few kilobytes; more is not one


class ManifestKey:
    """The manifest's keys, named once for its writers and its readers. ModelDir.commit writes the first group; a
    version made from another one (ModelDir.commit_after: a class or negatives learnt on the device, a repair) adds
    the second, with its record of how it was made under FIELD_LEARNING or REPAIR; a trained model has TRAINING."""

    FORMAT, VERSION, CREATED, AVCIL_VERSION, TORCH_VERSION = "format", "version", "created", "avcil_version", \
        "torch_version"
    CLASSES, FEATURES, HEAD, MEMORY, EXEMPLARS, FILES = "classes", "features", "head", "memory", "exemplars", "files"
    GRAM = "gram"  # format 3: the statistics files that hold the analytic readout's Gram matrix, or null
    PARENT, NOTE, TRAINING = "parent", "note", "training"
    FIELD_LEARNING, REPAIR = "field_learning", "repair"


def seal_of(manifest: dict) -> str:
    """The sha256 of a manifest's keys but the seal itself, in one canonical JSON form."""
    body = {key: value for key, value in manifest.items() if key != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_pointer(data: bytes, where: str) -> str:
    """The version CURRENT names."""
    try:
        name = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ModelDirError(f"{where}: not text; the file is corrupt") from None
    if not VERSION_NAME.fullmatch(name):
        raise ModelDirError(f"{where}: names {name[:40]!r}, not a version (vNNNN); the file is corrupt")
    return name


def parse_manifest(data: bytes, where: str) -> dict:
    """A manifest's bytes as a checked manifest (see `check_manifest`)."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelDirError(f"{where}: not UTF-8 text; this version is corrupt") from None
    except (ValueError, RecursionError) as error:  # JSONDecodeError, and an integer of thousands of digits
        raise ModelDirError(f"{where}: not valid JSON ({str(error).splitlines()[0][:80]}); this version is "
                            f"corrupt") from None
    return check_manifest(manifest, where)


def check_manifest(manifest, where: str) -> dict:
    """`manifest` itself when every key a reader uses has the shape the writer gives it; else a ModelDirError
    saying which key is wrong, ending in "this version is corrupt"."""
    def refuse(what: str):
        return ModelDirError(f"{where}: {what}; this version is corrupt")

    if not isinstance(manifest, dict):
        raise refuse(f"holds a JSON {type(manifest).__name__}, not an object")
    if SEAL in manifest and manifest[SEAL] != seal_of(manifest):
        raise refuse("its contents do not match its own checksum (modified or damaged)")
    if manifest.get(ManifestKey.FORMAT) not in FORMATS:
        raise refuse(f"format {manifest.get(ManifestKey.FORMAT)!r}, this avcil reads {list(FORMATS)}")
    classes = _check_classes(manifest.get(ManifestKey.CLASSES), refuse)
    shape = _check_features(manifest.get(ManifestKey.FEATURES), refuse)
    _check_head(manifest.get(ManifestKey.HEAD), shape, refuse)
    _check_files(manifest.get(ManifestKey.FILES), manifest[ManifestKey.FORMAT], refuse)
    _check_memory(manifest, len(classes), refuse)
    _check_gram(manifest, refuse)
    for key in (ManifestKey.CREATED, ManifestKey.NOTE, ManifestKey.PARENT, ManifestKey.VERSION):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            raise refuse(f"'{key}' is not a string")
    for key in (ManifestKey.TRAINING, ManifestKey.FIELD_LEARNING):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise refuse(f"'{key}' is not an object")
    return manifest


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_classes(classes, refuse) -> list:
    if not isinstance(classes, list):
        raise refuse("'classes' is missing or not a list")
    for entry in classes:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"].strip()
                and _is_int(entry.get("step"))):
            raise refuse(f"a class entry is not {{\"name\": text, \"step\": integer}}: {str(entry)[:60]}")
    names = [entry["name"] for entry in classes]
    if len(set(names)) != len(names):
        raise refuse("'classes' names a class twice")
    return classes


def _check_features(features, refuse):
    from avcil.features import FeatureShape

    if not isinstance(features, dict) or not isinstance(features.get("shape"), dict):
        raise refuse("'features' has no 'shape' object")
    try:
        shape = FeatureShape.from_dict(features["shape"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise refuse(f"'features.shape' is not a feature shape: {str(features['shape'])[:80]}") from None
    if min(shape.audio_dim, shape.time, shape.positions, shape.visual_dim) < 1:
        raise refuse(f"'features.shape' has a width below 1: {features['shape']}")
    profile = features.get("profile")
    if profile is not None:
        _check_profile(profile, refuse)
    return shape


def _check_profile(profile, refuse) -> None:
    """The encoder profile record as `profile_from_record` and the recogniser read it: a name, a version, and
    settings whose audio and visual preprocessing can be rebuilt."""
    from avcil.data.preprocess import audio_preprocess_from_settings, frame_preprocess_from_settings

    settings = profile.get("settings") if isinstance(profile, dict) else None
    if not (isinstance(profile, dict) and isinstance(profile.get("name"), str) and isinstance(settings, dict)
            and all(isinstance(settings.get(key), dict) for key in ("audio", "visual", "weights"))):
        raise refuse("'features.profile' is not an encoder profile record (name, settings: audio, visual, weights)")
    try:
        audio_preprocess_from_settings(settings["audio"])
        frame_preprocess_from_settings(settings["visual"])
    except (AvcilError, KeyError, TypeError, ValueError, OverflowError) as error:
        raise refuse(f"'features.profile' settings do not rebuild its preprocessing ({str(error)[:80]})") from None


def _check_head(head, shape, refuse) -> None:
    from avcil.model.head import HeadConfig

    config = head.get("config") if isinstance(head, dict) else None
    if not isinstance(config, dict):
        raise refuse("'head' has no 'config' object")
    try:
        config = HeadConfig(**config)
    except (AvcilError, TypeError, ValueError) as error:
        raise refuse(f"'head.config' is not a head config ({str(error)[:80]})") from None
    if not all(_is_int(width) and width >= 1 for width in (config.audio_dim, config.visual_dim, config.fusion_dim)):
        raise refuse("'head.config' widths are not positive integers")
    if (config.audio_dim, config.visual_dim) != (shape.audio_dim, shape.visual_dim):
        raise refuse(f"'head.config' reads audio {config.audio_dim} / visual {config.visual_dim} features, "
                     f"'features.shape' says {shape.audio_dim} / {shape.visual_dim}")
    if config.readout is not None and not isinstance(config.readout, dict):
        raise refuse("'head.config.readout' is neither null nor an object")
    if not isinstance(config.fusion, bool):  # absent in versions from before it: decided at load (load_head)
        raise refuse("'head.config.fusion' is neither true nor false")


def _check_files(files, format_, refuse) -> None:
    if not isinstance(files, dict) or HEAD_FILE not in files:
        raise refuse(f"'files' lists no {HEAD_FILE}")
    strange = [name for name in files if name not in VERSION_FILES]
    if strange:
        raise refuse(f"'files' names {strange[:3]}, which the writer never produces (outside the model dir?)")
    if not all(isinstance(sha, str) and SHA256.fullmatch(sha) for sha in files.values()):
        raise refuse("a checksum in 'files' is not a sha256")
    if MEMORY_FILE in files and format_ != 1:
        raise refuse(f"'files' lists {MEMORY_FILE}, which only format 1 has")


def _check_memory(manifest: dict, class_count: int, refuse) -> None:
    from avcil.model.memory import ExemplarMemory

    settings = manifest.get("memory")
    if settings is not None:
        if not isinstance(settings, dict):
            raise refuse("'memory' is neither null nor an object")
        try:
            ExemplarMemory(**settings)
        except (AvcilError, TypeError, ValueError) as error:
            raise refuse(f"'memory' is not the memory's settings ({str(error)[:80]})") from None
    exemplars = manifest.get("exemplars", [])
    if not isinstance(exemplars, list):
        raise refuse("'exemplars' is not a list")
    if exemplars and settings is None:
        raise refuse("'exemplars' lists files but 'memory' is null")
    labels = set()
    for entry in exemplars:
        if not (isinstance(entry, dict) and _is_int(entry.get("label")) and _is_int(entry.get("count"))
                and isinstance(entry.get("file"), str)):
            raise refuse(f"an exemplar entry is not {{\"label\", \"file\", \"count\"}}: {str(entry)[:80]}")
        if not EXEMPLAR_NAME.fullmatch(entry["file"]):
            raise refuse(f"an exemplar entry names {entry['file'][:80]!r}, a file the writer never produces "
                         f"(outside the model dir?)")
        if not 0 <= entry["label"] < class_count or entry["label"] in labels or entry["count"] < 1:
            raise refuse(f"an exemplar entry has label {entry['label']} / count {entry['count']} for "
                         f"{class_count} classes")
        labels.add(entry["label"])


def _check_gram(manifest: dict, refuse) -> None:
    """Format 3 lists a Gram matrix's files ({"base": name, "rows": [{"file": name, "count": n}]}, with its
    per-modality readouts' entries under "parts") exactly when the head has an analytic readout; earlier formats keep
    it inside head.pt."""
    gram = manifest.get(ManifestKey.GRAM)
    readout = manifest[ManifestKey.HEAD]["config"].get("readout")
    needed = manifest[ManifestKey.FORMAT] >= 3 and isinstance(readout, dict) and readout.get("kind") == "analytic"
    if gram is None:
        if needed:
            raise refuse("'gram' is missing for the head's analytic readout")
        return
    if not needed:
        raise refuse("'gram' lists statistics files, which only an analytic readout of format 3 has")
    _check_gram_entry(gram, "gram", refuse)


def _check_gram_entry(gram, where: str, refuse) -> None:
    if not (isinstance(gram, dict) and isinstance(gram.get("base"), str) and isinstance(gram.get("rows"), list)):
        raise refuse(f"'{where}' is not {{\"base\", \"rows\"}}: {str(gram)[:80]}")
    for entry in gram["rows"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and _is_int(entry.get("count"))
                and entry["count"] >= 1):
            raise refuse(f"a '{where}.rows' entry is not {{\"file\", \"count\" >= 1}}: {str(entry)[:80]}")
    for name in [gram["base"]] + [entry["file"] for entry in gram["rows"]]:
        if not STATISTICS_NAME.fullmatch(name):
            raise refuse(f"'{where}' names {name[:80]!r}, a file the writer never produces (outside the model dir?)")
    parts = gram.get("parts", {})
    if not (isinstance(parts, dict) and set(parts) <= set(GRAM_PARTS)):
        raise refuse(f"'{where}.parts' is not an object of {' and '.join(GRAM_PARTS)}: {str(parts)[:80]}")
    for name, part in parts.items():
        _check_gram_entry(part, f"{where}.parts.{name}", refuse)