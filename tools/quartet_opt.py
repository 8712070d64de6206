"""``quartet-opt``: the pipeline tool, shaped like ``mlir-opt``.

    quartet-opt [FILE|-] [-o OUT] [--pass-pipeline='builtin.module(...)'] [--split-input-file]
                [--mlir-print-ir-after-all] [--mlir-print-op-generic] [--list-passes]

Reads MLIR (the Quartet dialect loaded), verifies it, runs the pipeline (Quartet and upstream
passes mixed, with options: ``roller-config{target=sm_90}``), verifies again and prints the
result. With ``-o NAME.qrt`` (or ``--emit-artifact``) it finishes the result instead: the IR of
any stage of any pipeline goes through the one lowering stage (``quartet.lowering.lower``) into
a runnable artifact, for the target its tiles were configured for (``--target`` overrides).
Errors are one line, ``file:line:col: error: ...``, exit status 1, no output file.
"""

from __future__ import annotations

import argparse
import io
import sys

from quartet.errors import QuartetError
from quartet.tools.cli import ToolParser, read_input, run_main, write_atomically

SPLIT_MARKER = "// -----"


def _arguments() -> argparse.ArgumentParser:
    p = ToolParser("quartet-opt", __doc__)
    p.add_argument("input", nargs="?", default="-", help="input file ('-' for stdin)")
    p.add_argument("-o", dest="output", default="-", help="output file ('-' for stdout)")
    p.add_argument("--pass-pipeline", default=None,
                   help="passes to run, as 'builtin.module(pass1,pass2{opt=v},...)' "
                        "(default: none: parse, verify and print)")
    p.add_argument("--split-input-file", action="store_true",
                   help=f"process each chunk between '{SPLIT_MARKER}' lines on its own")
    p.add_argument("--mlir-print-ir-after-all", action="store_true",
                   help="print the IR to stderr after every pass")
    p.add_argument("--mlir-print-op-generic", action="store_true",
                   help="print every op in generic form")
    p.add_argument("--emit-artifact", action="store_true",
                   help="write the lowered artifact to -o (implied by an -o ending in .qrt)")
    p.add_argument("--target", default=None,
                   help="target of the artifact (default: the tiles' own, else sm_90)")
    p.add_argument("--chip", default=None, help="chip of the target (default: its first)")
    p.add_argument("--list-passes", action="store_true",
                   help="list Quartet passes and pipelines with their options, then exit")
    return p


def list_passes(out) -> None:
    from quartet.driver import registry
    from quartet.passes.base import format_value
    import dataclasses

    registry.load_all()
    out.write("Quartet passes:\n")
    for name, cls in registry.PASSES.items():
        out.write(f"  {name:32} {cls.summary}\n")
        for f in dataclasses.fields(cls):
            default = format_value(f.default)
            out.write(f"      {f.name}={default}\n")
    out.write("Quartet pipelines:\n")
    for name, pipe in registry.PIPELINES.items():
        out.write(f"  {name:32} {pipe.summary}\n")
        for opt, help_text in pipe.options.items():
            out.write(f"      {opt}: {help_text}\n")
    out.write("Any other element of --pass-pipeline is an upstream MLIR pass "
              "(e.g. canonicalize, func.func(cse)).\n")


def _chunks(text: str, split: bool) -> list[str]:
    """Input chunks, each padded with blank lines so that line numbers match the file."""
    if not split:
        return [text]
    chunks, current, first_line = [], [], 0
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.strip() == SPLIT_MARKER:
            chunks.append("\n" * first_line + "\n".join(current))
            current, first_line = [], i + 1
        else:
            current.append(line)
    chunks.append("\n" * first_line + "\n".join(current))
    return chunks


def _process(chunk, args, source_name, new_context, parse, run_pipeline, artifact=False):
    context = new_context()
    module = parse(chunk, context, source_name)
    if args.pass_pipeline:
        run_pipeline(module, args.pass_pipeline,
                     print_ir_after_all=args.mlir_print_ir_after_all,
                     source_name=source_name, print_generic=args.mlir_print_op_generic)
    if artifact:
        from quartet.lowering.lower import lower

        with context:
            return lower(module, args.target, args.chip,
                         producer={"tool": "quartet-opt", "source": source_name})
    buffer = io.StringIO()
    with context:
        module.operation.print(file=buffer, print_generic_op_form=args.mlir_print_op_generic)
    return buffer.getvalue().rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    args = _arguments().parse_args(argv)
    if args.list_passes:
        list_passes(sys.stdout)
        return 0

    from quartet.dialects import context as new_context
    from quartet.driver import parse, run_pipeline

    source = read_input(args.input)
    source_name = "<stdin>" if args.input == "-" else args.input
    if args.emit_artifact or args.output.endswith(".qrt"):
        if args.output == "-":
            raise QuartetError("quartet-opt: an artifact is written to a file: give -o NAME.qrt "
                               "(or a folder)")
        if args.split_input_file:
            raise QuartetError("quartet-opt: --split-input-file makes several modules; an "
                               "artifact holds one")
        writer = _process(source, args, source_name, new_context, parse, run_pipeline, True)
        writer.save(args.output)
        return 0
    outputs: list[str] = []
    failed = False
    for chunk in _chunks(source, args.split_input_file):
        try:
            outputs.append(_process(chunk, args, source_name, new_context, parse, run_pipeline))
        except QuartetError as e:
            if not args.split_input_file:
                raise
            # Like mlir-opt: report each failing chunk, go on, and fail at the end.
            print(str(e), file=sys.stderr)
            failed = True
    if failed:
        return 1
    result = f"{SPLIT_MARKER}\n".join(outputs)
    if args.output == "-":
        sys.stdout.write(result)
    else:
        write_atomically(args.output, result)
    return 0


def entry() -> int:
    return run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
