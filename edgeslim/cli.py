"""The `edgeslim` command: one dispatcher that imports each subcommand lazily.

Each subcommand module has `add_args(parser)` and `run(args) -> int`.
User errors (EdgeslimError) print one line `edgeslim: ...` and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import EdgeslimError

COMMANDS = {
    "convert": ("edgeslim.convert.cli", "convert a Hugging Face model or F16/F32 GGUF to an edgeslim GGUF"),
    "inspect": ("edgeslim.inspect", "list a GGUF file's tensors, types, sizes and edgeslim metadata"),
    "generate": ("edgeslim.runtime.cli_generate", "generate text from a prompt"),
    "chat": ("edgeslim.runtime.cli_chat", "chat with a model in the terminal"),
    "eval": ("edgeslim.runtime.cli_eval", "perplexity, KL divergence against a base file, and task accuracy"),
    "serve": ("edgeslim.runtime.server.cli", "OpenAI-compatible local server and chat page"),
    "sweep": ("edgeslim.sweep.cli", "convert a grid of bits/sparsity/allocations and chart quality, speed, size"),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="edgeslim", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    module = None
    for name, (modname, help_text) in COMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:  # import only the command being run
            module = importlib.import_module(modname)
            module.add_args(sub)
    return parser, module


def _version() -> str:
    from . import __version__

    return f"edgeslim {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser, module = build_parser(argv)
        args = parser.parse_args(argv)
        if module is None:  # no command given
            parser.print_help(sys.stderr)
            return 2
        return int(module.run(args) or 0)
    except EdgeslimError as err:
        print(f"edgeslim: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `edgeslim inspect f.gguf | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit flush
        return 0
    except KeyboardInterrupt:
        print("edgeslim: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("edgeslim: out of memory; use a smaller model, a smaller --ctx, or a lower-bit type", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
