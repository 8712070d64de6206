"""What every Quartet command-line tool shares: one-line errors, exit codes, safe output files.

A user mistake (:class:`QuartetError`) becomes ``<location>: error: <message>`` on stderr and
exit status 1, with no traceback. Output files are written to a temporary name and renamed
only when the whole command succeeded, so a failed run leaves no partial file behind.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Callable

from quartet.errors import QuartetError


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
