"""The command line builds only the command asked for: a device without the training extras can still run it."""

import subprocess
import sys

import pytest


def imported(*argv: str) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "avcil", *argv], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def test_help_lists_every_command_without_importing_any():
    result = subprocess.run([sys.executable, "-m", "avcil", "--help"], capture_output=True, text=True, timeout=60)
    for command in ("train", "bench", "extract", "data", "export", "run", "learn", "model", "serve", "demo"):
        assert f"    {command}" in result.stdout
    modules = imported("--help")
    assert not {"torch", "matplotlib", "transformers", "cv2"} & modules
    assert not [m for m in modules if m.startswith("avcil.") and m not in ("avcil.cli", "avcil.errors")]


@pytest.mark.parametrize("argv", [("model", "list", "--help"), ("run", "--help"), ("learn", "--help")])
def test_device_commands_import_neither_training_plotting_transformers_nor_data_builders(argv):
    modules = imported(*argv)
    unwanted = {"matplotlib", "transformers", "avcil.train.learner", "avcil.train.protocol", "avcil.model.losses",
                "avcil.data.avdigits", "avcil.train.plots", "avcil.bench.accuracy"}
    assert not unwanted & modules, unwanted & modules


def test_listing_a_model_imports_neither_training_plotting_transformers_nor_data_builders(toy_model):
    modules = imported("model", "list", "--model", str(toy_model), "--json")
    unwanted = {"matplotlib", "transformers", "sklearn", "avcil.train.learner", "avcil.train.protocol",
                "avcil.model.losses", "avcil.data.avdigits", "avcil.train.plots", "avcil.model.encoders.paper"}
    assert "avcil.modeldir" in modules and not unwanted & modules, unwanted & modules
