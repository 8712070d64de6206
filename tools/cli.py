"""What every Quartet command-line tool shares: one-line errors, exit codes, safe output files,
and a command line that behaves the same in every tool.

A user mistake (:class:`QuartetError`) becomes ``<location>: error: <message>`` on stderr and
exit status 1, with no traceback; argparse's own usage errors too (:class:`ToolParser`).
Output files are written to a temporary name and renamed only when the whole command
succeeded, so a failed run leaves no partial file behind. Every tool has ``--version`` and
shows each option's default in ``--help`` (issue 15, item 6).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Callable

from quartet.errors import QuartetError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; each option's help ends with its default (when it has a
    value worth showing and the help does not say it already)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS
                or default == [] or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


class ToolParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one QuartetError line, with ``--version``."""

    def __init__(self, prog: str, doc: str, **kwargs):
        super().__init__(prog=prog, description=describe(doc), formatter_class=HelpFormatter,
                         **kwargs)
        from quartet import __version__

        self.add_argument("--version", action="version", version=f"{prog} {__version__}",
                          help="print the version and exit")

    def error(self, message):
        raise QuartetError(f"{self.prog}: {message}")


def describe(doc: str) -> str:
    """A module docstring's first paragraph as --help text (reST quotes taken out)."""
    return doc.strip().split("\n\n")[0].replace("``", "")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def natural_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None


def run_main(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run a tool's main; turn user errors into one line and exit 1."""
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except QuartetError as e:
        print(str(e), file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        return 130


def write_atomically(path: str, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise QuartetError(f"cannot write '{path}': folder '{folder}' does not exist")
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".quartet-", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_input(path: str) -> str:
    """The text of ``path``, or of stdin for ``-``."""
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        raise QuartetError("could not open input file: no such file", path) from None
    except IsADirectoryError:
        raise QuartetError("could not open input file: it is a directory", path) from None
    except UnicodeDecodeError:
        raise QuartetError("could not read input file: not UTF-8 text", path) from None
    except PermissionError:
        raise QuartetError("could not open input file: permission denied", path) from None
