"""``quartet-compile``: compile a PyTorch model class from a Python file into an artifact.

    quartet-compile FILE.py:ClassName --input 1x128x768:f16 [--input ...] [--pipeline roller]
                    [--target auto|sm_90|sm_80|gfx942|cpu] -o OUT [--weights STATE_DICT.pt]
                    [--emit linalg|quartet|gpu|llvm|ptx] [--seed N] [--model-dtype auto|f32|...]
                    [--no-cache] [--clear-cache] [--quiet]

Loads ``ClassName`` from ``FILE.py`` (imported by path, its folder first on ``sys.path``), builds
it with no arguments under ``torch.manual_seed(seed)`` (random weights) or loads ``--weights``
(a state dict saved with ``torch.save``), casts it to the inputs' floating type (``auto``: f16
inputs make an f16 model), draws random inputs of the given shapes and types from the seed and
runs :func:`quartet.frontend.compile.compile_to_artifact`. The default target ``auto`` is the
visible GPU's architecture, else ``cpu``; the choice is printed (frontend/target.py). The artifact is a folder, or one file
when OUT ends in ``.qrt``. ``--emit STAGE`` prints that stage's IR (to stdout, or to ``-o``)
and stops.

Compiles go through the compile cache (``frontend/cache.py``: ``--no-cache`` bypasses it,
``--clear-cache`` empties it). A compile that runs longer than two seconds shows its stage and
the kernels built on a terminal (``quartet/progress.py``), never in a pipe; ``--quiet`` hides it.

The manifest's ``producer`` JSON records what ``quartet-run --check`` needs to rebuild the
reference: the model file (absolute and as given), the class, the weights file, the model dtype,
the input specs and the seed, and the host machine for cpu artifacts.

Every mistake (a model file that does not import, a missing class, a constructor that needs
arguments, a bad ``--input``, an unknown target, pipeline or stage, an unsupported op) is one
line, ``location: error: message``, exit status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import inspect
import platform
import sys
import traceback
from pathlib import Path

from quartet.errors import QuartetError
from quartet.tools.cli import ToolParser, run_main, write_atomically
from quartet.tools.quartet_run import SHORT_DTYPES, parse_input_spec, random_inputs, to_torch

STAGES = ("linalg", "quartet", "gpu", "llvm", "ptx")
MODEL_DTYPES = ("auto", "f32", "f16", "bf16", "f64")


def _arguments() -> argparse.ArgumentParser:
    p = ToolParser("quartet-compile", __doc__)
    p.add_argument("model", metavar="FILE.py:ClassName", nargs="?",
                   help="the model class to compile")
    p.add_argument("--input", action="append", default=[], metavar="DIMS:DTYPE",
                   help="one per forward() argument, e.g. 1x128x768:f16 or scalar:i64 "
                        f"(dtypes: {', '.join(k for k in SHORT_DTYPES if k != 'i1')})")
    p.add_argument("--pipeline", default="roller",
                   help="named pipeline (quartet-opt --list-passes), with options other than "
                        "the target: 'welder{verbose=true}'")
    p.add_argument("--target", default="auto",
                   help="auto (the visible GPU's architecture, else cpu; printed), sm_90, "
                        "sm_80, gfx942 or cpu")
    p.add_argument("-o", dest="output", default=None,
                   help="artifact to write (folder, or one file ending in .qrt); with --emit, "
                        "the IR file ('-' or absent: stdout)")
    p.add_argument("--weights", default=None, metavar="STATE_DICT.pt",
                   help="load this state dict instead of random weights")
    p.add_argument("--emit", default=None, metavar="STAGE",
                   help=f"print the IR after a stage and stop: {'|'.join(STAGES)}")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--model-dtype", default="auto", metavar="DTYPE",
                   help="cast the model's floating parameters: auto (the inputs' floating type "
                        "when they share one), f32, f16, bf16, f64")
    p.add_argument("--no-cache", action="store_true",
                   help="compile from scratch: neither read nor write the compile cache "
                        "(QUARTET_CACHE=0 does the same; its folder: QUARTET_CACHE_DIR, else "
                        "the user's cache folder)")
    p.add_argument("--clear-cache", action="store_true",
                   help="empty the compile cache first (alone: empty it and stop)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress on the terminal (it shows only on a terminal, after "
                        "2 s; QUARTET_QUIET=1 does the same)")
    return p


# --------------------------------------------------------------------------------------------
# Loading and building the model (also used by quartet-run --check)
# --------------------------------------------------------------------------------------------


def load_model_class(spec: str):
    """``FILE.py:ClassName`` (or ``package.module.ClassName``) -> the nn.Module subclass."""
    path, sep, name = spec.rpartition(":")
    if not sep:
        if spec.endswith(".py") or "." not in spec:
            raise QuartetError(f"expected FILE.py:ClassName, got '{spec}'")
        return _class_from_module(spec)
    if not path or not name.isidentifier():
        raise QuartetError(f"expected FILE.py:ClassName, got '{spec}'")
    module = _import_file(path)
    return _pick_class(module, name, path)


def _class_from_module(dotted: str):
    module_name, _, name = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise QuartetError(f"cannot import module '{module_name}' ({e})") from None
    return _pick_class(module, name, getattr(module, "__file__", None) or module_name)


def _import_file(path: str):
    """Import a Python file by path as a fresh module; its errors become one located line."""
    file = Path(path).resolve()
    if not file.is_file():
        raise QuartetError("could not open model file: " +
                           ("it is a folder" if file.is_dir() else "no such file"), path)
    key = hashlib.sha1(str(file).encode()).hexdigest()[:10]
    module_name = f"_quartet_model_{file.stem}_{key}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    folder = str(file.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)   # sibling imports, as when the file is run as a script
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[module_name]
        where = f"{e.filename or path}:{e.lineno or 0}:{e.offset or 0}"
        raise QuartetError(f"model file does not import: {e.msg}", where) from None
    except Exception as e:   # anything the file raises while it runs
        del sys.modules[module_name]
        raise QuartetError(f"model file does not import: {_one_line(e)}",
                           _frame_in(e, file) or path) from None
    return module


def _pick_class(module, name: str, where: str):
    import torch

    cls = getattr(module, name, None)
    if cls is None:
        found = sorted(k for k, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, torch.nn.Module)
                       and getattr(v, "__module__", None) == module.__name__)
        known = ", ".join(found) if found else "none"
        raise QuartetError(f"model file has no class '{name}' (nn.Module classes in it: {known})",
                           str(where))
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise QuartetError(f"'{name}' is not a torch.nn.Module subclass", str(where))
    return cls


def build_model(cls, *, seed: int = 0, weights: str | None = None, dtype: str | None = None):
    """``cls()`` under ``torch.manual_seed(seed)``, ``weights`` loaded, cast to ``dtype``, eval."""
    import torch

    where = _class_location(cls)
    required = _required_parameters(cls)
    if required:
        raise QuartetError(
            f"{cls.__name__}() needs argument(s) {', '.join(required)}: the model is built with "
            f"no arguments (give them defaults, or subclass it with fixed sizes)", where)
    torch.manual_seed(seed)
    try:
        module = cls()
    except Exception as e:
        file = inspect.getsourcefile(cls)
        frame = _frame_in(e, Path(file).resolve()) if file else None
        raise QuartetError(f"{cls.__name__}() failed: {_one_line(e)}", frame or where) from None
    if weights is not None:
        _load_state_dict(module, weights)
    if dtype:
        module = module.to(getattr(torch, dtype))
    return module.eval()


def _load_state_dict(module, path: str) -> None:
    import torch

    if not Path(path).is_file():
        raise QuartetError("could not open weights file: no such file", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise QuartetError(f"not a PyTorch state dict ({_one_line(e)})", path) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise QuartetError("not a state dict (a dict of tensor names to tensors)", path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [f"{k} {list(state[k].shape)} (model: {list(own[k].shape)})"
             for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise QuartetError(f"state dict does not fit {type(module).__name__}: "
                           + "; ".join(problems), path)
    module.load_state_dict(state)


def _required_parameters(cls) -> list[str]:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return []
    return [n for n, p in sig.parameters.items()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _class_location(cls) -> str | None:
    try:
        file = inspect.getsourcefile(cls)
        line = inspect.getsourcelines(cls)[1]
    except (TypeError, OSError):
        return None
    return f"{file}:{line}:0" if file else None


def _frame_in(exc: BaseException, file: Path) -> str | None:
    """``file:line:0`` of the innermost traceback frame in ``file`` (None if none is)."""
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == file:
            found = f"{frame.filename}:{frame.lineno}:0"
    return found


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# --------------------------------------------------------------------------------------------
# The tool
# --------------------------------------------------------------------------------------------


def model_dtype(choice: str, specs) -> str | None:
    """The torch dtype name to cast the model to (None: keep what the constructor made)."""
    if choice not in MODEL_DTYPES:
        raise QuartetError(f"unknown --model-dtype '{choice}' (known: {', '.join(MODEL_DTYPES)})")
    if choice != "auto":
        return SHORT_DTYPES[choice]
    floats = {s.dtype for s in specs if s.dtype in ("float16", "bfloat16", "float32", "float64")}
    return floats.pop() if len(floats) == 1 and floats != {"float32"} else None


def _check_choices(args) -> None:
    """Refuse an unknown target, pipeline or stage before the slow model import."""
    from quartet.frontend.compile import pipeline_passes
    from quartet.runtime import targets

    if args.emit is not None and args.emit not in STAGES:
        raise QuartetError(f"unknown --emit stage '{args.emit}' (stages: {', '.join(STAGES)})")
    targets.get(args.target)
    pipeline_passes(args.pipeline, args.target)


def main(argv: list[str]) -> int:
    args = _arguments().parse_args(argv)
    if args.clear_cache:
        from quartet.frontend import cache

        removed = cache.clear()
        print(f"quartet-compile: removed {removed} compile cache entries from "
              f"{cache.cache_dir()}", file=sys.stderr)
        if args.model is None:
            return 0
    if args.model is None:
        raise QuartetError("quartet-compile: give the model to compile, FILE.py:ClassName")
    if args.emit is None and args.output in (None, "-"):
        raise QuartetError("quartet-compile: give the artifact to write with -o OUT "
                           "(or print IR with --emit STAGE)")
    missing = [m for m in ("torch", "torch_mlir", "mlir") if importlib.util.find_spec(m) is None]
    if missing:
        raise QuartetError(f"quartet-compile needs {', '.join(missing)}: install the compiler "
                           f"with pip install 'quartet[compiler]'")
    specs = [parse_input_spec(s) for s in args.input]
    dtype = model_dtype(args.model_dtype, specs)
    from quartet.frontend.target import AUTO, choose_for_machine

    chosen = choose_for_machine() if args.target == AUTO else None   # printed on success
    if chosen is not None:
        args.target = chosen.target
    _check_choices(args)
    if not specs:
        raise QuartetError("quartet-compile: give one --input DIMS:DTYPE per forward() argument")

    _quiet_torch_logs()
    cls = load_model_class(args.model)
    weights = str(Path(args.weights).resolve()) if args.weights else None
    module = build_model(cls, seed=args.seed, weights=weights, dtype=dtype)
    _check_arity(module, len(specs))
    inputs = to_torch(random_inputs(specs, args.seed), specs)

    from quartet import __version__
    from quartet.frontend.compile import compile_to_artifact

    model_file, _, class_name = args.model.rpartition(":")
    producer = {
        "tool": "quartet-compile",
        "version": __version__,
        "model_file": str(Path(model_file).resolve()) if model_file else None,
        "model_file_arg": model_file or None,
        "class": class_name if model_file else None,
        "model": None if model_file else args.model,
        "weights": weights,
        "model_dtype": dtype,
        "inputs": [str(s) for s in specs],
        "seed": args.seed,
        "pipeline": args.pipeline,
        "target": args.target,
    }
    if args.target == "cpu":
        producer["machine"] = platform.machine()
    producer = {k: v for k, v in producer.items() if v is not None}
    writer, result, text = compile_to_artifact(module, inputs, pipeline=args.pipeline,
                                               target=args.target, stop_after=args.emit,
                                               producer=producer,
                                               cache=False if args.no_cache else None,
                                               progress=False if args.quiet else None)
    if args.emit is not None:
        text = text if text.endswith("\n") else text + "\n"
        if args.output in (None, "-"):
            sys.stdout.write(text)
        else:
            write_atomically(args.output, text)
        if chosen is not None:
            print(f"quartet-compile: {chosen.line()}", file=sys.stderr)
        return 0
    path = writer.save(args.output)
    seconds = ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items())
    if result.cached:
        seconds = (f"export {result.seconds['export']:.2f} s, from the compile cache in "
                   f"{result.seconds['cache']:.2f} s")
    auto = f" ({chosen.line()})" if chosen is not None else ""
    print(f"wrote {path} ({args.target}, {args.pipeline}; {seconds}){auto}", file=sys.stderr)
    return 0


def _quiet_torch_logs() -> None:
    """torch logs a traceback when fake tensors meet a shape error (a wrong --input); the
    error itself comes back as one QuartetError line, so keep the log quiet."""
    import logging

    import torch  # noqa: F401  (torch sets its loggers' levels when it is imported)

    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)


def _check_arity(module, count: int) -> None:
    """Compare the --input count with forward()'s positional parameters."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    needed = [p for p in positional if p.default is inspect.Parameter.empty]
    if not len(needed) <= count <= len(positional):
        names = ", ".join(p.name for p in positional)
        raise QuartetError(f"{type(module).__name__}.forward({names}) takes {len(needed)} "
                           f"input(s); {count} --input given", _class_location(type(module)))


def entry() -> int:
    return run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
