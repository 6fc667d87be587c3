"""Turn what the user names on the command line (`--data`, `--avcil-release`) into a Benchmark."""

from __future__ import annotations

from pathlib import Path

from avcil.errors import InvalidInput
from avcil.fileio import default_cache
from avcil.data.clips import Benchmark, BenchmarkDefaults

BUILT_IN = ("synthetic", "av-digits")


def av_digits_benchmark(cache: Path, progress: bool = True) -> Benchmark:
    """AV-Digits clips built offline, then features from the lite encoders; both cached under `cache`."""
    from avcil.data.avdigits import AV_DIGITS_CLASSES, AV_DIGITS_STEPS, build_av_digits
    from avcil.train.extract import extract
    from avcil.data.store import open_store
    from avcil.model.encoders import PROFILE_VERSIONS

    csv = build_av_digits(cache / "av-digits")
    # The folder names the lite profile's version, so that a new version extracts its own features beside the
    # old ones instead of being refused by them.
    store = cache / f"av-digits-lite-v{PROFILE_VERSIONS['lite']}-features"
    extract(csv, store, "lite", progress=progress)
    opened = open_store(store)
    benchmark = opened.benchmark(AV_DIGITS_STEPS, class_order=list(AV_DIGITS_CLASSES), name="av-digits",
                                 defaults=BenchmarkDefaults(memory_budget=100, epochs=60,
                                                            fusion_dim=256, batch_size=64, exemplar_batch_size=64))
    benchmark.profile = opened.profile
    return benchmark


def load_benchmark(data: str | None, release: str | None = None, steps: int | None = None,
                   cache: Path | None = None, progress: bool = True) -> Benchmark:
    if (data is None) == (release is None):
        raise InvalidInput("name exactly one data source: --data synthetic|av-digits|STORE or --avcil-release DIR")
    if release is not None:
        from avcil.data.release import load_release

        return load_release(release, num_steps=steps)
    if data == "synthetic":
        from avcil.data.synthetic import SyntheticSpec, synthetic_benchmark

        return synthetic_benchmark(SyntheticSpec(steps=steps) if steps else SyntheticSpec())
    if data == "av-digits":
        return av_digits_benchmark(cache or default_cache(), progress)
    store = Path(data)
    if not (store / "store.json").is_file():
        raise InvalidInput(f"--data {data!r}: not one of {BUILT_IN} and not a feature store directory")
    from avcil.data.store import open_store

    opened = open_store(store)
    if steps is None:
        raise InvalidInput(f"--data {data}: a feature store needs --steps (its {len(opened.class_names())} classes "
                         f"are split into that many equal steps)")
    benchmark = opened.benchmark(steps)
    benchmark.profile = opened.profile
    return benchmark
