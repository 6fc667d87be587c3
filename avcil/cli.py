"""The `avcil` command line. Each command's flags and work live in its stage's package; this file only knows which
module holds which command, so that building the command line imports that one module and nothing else: on a
device with only the runtime installed, `avcil --help`, `avcil run` and `avcil model list` import neither
training, plotting, transformers nor the data builders."""

from __future__ import annotations

import argparse
import importlib
import sys

from avcil import __version__
from avcil.errors import AvcilError

# command -> (module with add_parser(subparsers) or add_parsers(subparsers), one line of help)
COMMANDS = {
    "train": ("avcil.train.command", "run the class-incremental protocol and write RUN/results.json, accuracy.png, "
                                     "model/"),
    "bench": ("avcil.bench.command", "benchmarks that write JSON, a markdown table and a plot"),
    "extract": ("avcil.train.extract", "encode videos into a feature store (resumable)"),
    "data": ("avcil.data.avdigits", "build benchmark clips offline"),
    "export": ("avcil.export.command", "export the encoders to ONNX or TensorRT, validated (the head stays in torch)"),
    "run": ("avcil.runtime.commands", "recognise live from a camera and a microphone; one JSON line per decision"),
    "learn": ("avcil.runtime.commands", "add a class to a model dir from files or from clips recorded live"),
    "model": ("avcil.runtime.commands", "versions of a model dir: list, rollback, repair"),
    "serve": ("avcil.runtime.serve", "the device's web page: live view, add a class, versions and rollback, behind "
                                     "a token"),
    "demo": ("avcil.demo", "offline demo: train on AV-Digits, recognise paced clips, learn a digit"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, but a flag it cannot use is one line, as every other bad input is (the usage it would
    print first is what --help shows). Subcommands' parsers are of this class too (add_subparsers' default)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command` built in full (its module imported) and every other command listed by name."""
    parser = OneLineParser(
        prog="avcil", description="Audio-visual class-incremental recognition: train, extract, export, run live, learn "
                    "new classes in the field, benchmark.")
    parser.add_argument("--version", action="version", version=f"avcil {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if command in COMMANDS:
        module = importlib.import_module(COMMANDS[command][0])
        (getattr(module, "add_parser", None) or module.add_parsers)(commands)
    for name, (_, text) in COMMANDS.items():
        if name not in commands.choices:
            commands.add_parser(name, help=text, add_help=False)
    return parser


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        return args.func(args)
    except (AvcilError, OSError) as e:
        # Bad input (a damaged file, a missing device, a corrupt model dir) and the machine's own refusals (a full
        # disk, a missing file, no permission) are reported as one clear line; anything else is a bug and keeps its
        # traceback.
        print(f"avcil {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
