"""Kernel builds as jobs: identical tiles built once, distinct ones in parallel (issue 14).

A tile's kernel depends on what it computes, its schedule (the tile's attributes), the chip and
what is emitted - not on the names of the values it reads, where it sits in the program or
which buffers it is given. :func:`standalone` writes a tile as a module of its own: one function
whose arguments are the tensors the tile reads (the constants and ``tensor.empty`` results it
reads are cloned in front of it: the kernel builders read their values), holding a clone of the
tile. Printed without locations, that module is the tile's *canonical text*. Tiles with the same
canonical text (and chip, emit kind and ``QUARTET_GEMM``) are one :class:`Job`, built once; every
one of them gets the job's KernelSpecs, and the artifact holds one binary for them (its writer
already shares files by content).

A job carries text, not MLIR objects (they cannot cross processes): the standalone module with
its locations (so that an error still names the model's line), the chip, a kernel name and the
emit kind. :func:`run_jobs` builds the jobs in this process and, when there are enough of them,
in worker processes too: ``python -m quartet.lowering.jobs``, one per core beyond this one
(:func:`worker_count`; ``QUARTET_JOBS=N`` sets the number of processes, 1 builds everything
here). Workers are plain child processes fed pickled jobs over a pipe, not ``multiprocessing``
ones: those would import the user's ``__main__`` script again. Each result comes back with the
warnings the build gave and its GEMM fallbacks, which are replayed here; an error comes back as
the QuartetError it was; a worker that dies names the tile it was building.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field

from mlir import ir
from mlir.dialects import func

from quartet.errors import QuartetError, location_of

#: below this many distinct builds everything is built in this process (a worker's start-up,
#: about a second of imports, would cost more than it saves)
MIN_JOBS_FOR_WORKERS = 3
#: how a worker is started (after ``sys.executable``)
WORKER_COMMAND = ["-m", "quartet.lowering.jobs"]
_CLONED_INPUTS = ("arith.constant", "tensor.empty")


@dataclass(frozen=True)
class Job:
    """One distinct kernel build: a tile written as a module of its own."""

    text: str                   # the standalone module, with locations
    target: str                 # the chip's target and name (runtime/targets.py)
    chip: str
    kernel: str                 # the kernel's name (``qN``): its symbols in the binary
    emit: str
    op: str                     # the tile's root op and place, for messages
    location: str | None


@dataclass
class Result:
    """What building a job gave: specs, or an error; the warnings and fallbacks on the way."""

    specs: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    fallbacks: list = field(default_factory=list)
    error: tuple | None = None      # ("quartet", message, location) | ("crash", text)


# ---------------------------------------------------------------------------------------------
# Canonical text


def _owner(value: ir.Value):
    owner = value.owner
    return None if isinstance(owner, ir.Block) else owner.operation


def standalone(tile) -> ir.Module:
    """``tile`` as a module of its own (see the module docstring), in the tile's Context."""
    captures = tile.inputs
    kept = [v for v in captures
            if _owner(v) is None or _owner(v).name not in _CLONED_INPUTS]
    with tile.operation.context, ir.Location.unknown():
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):
            fn = func.FuncOp("tile", ([v.type for v in kept], [r.type for r in tile.results]))
        entry = fn.add_entry_block()
        mapping = dict(zip(kept, entry.arguments))
        with ir.InsertionPoint(entry):
            for v in captures:
                if v not in mapping:
                    mapping[v] = _owner(v).clone().results[0]
            clone = tile.operation.clone()
            func.ReturnOp(clone.results)

    def rebind(op):
        for i, operand in enumerate(op.operands):
            if operand in mapping:
                op.operands[i] = mapping[operand]
        return ir.WalkResult.ADVANCE

    clone.walk(rebind)
    return module


def job_key(canonical: str, job: Job) -> str:
    gemm = os.environ.get("QUARTET_GEMM", "1")
    return hashlib.sha256(f"{job.target}|{job.chip}|{job.emit}|{gemm}|{canonical}"
                          .encode()).hexdigest()


def plan_jobs(tiles: list, chip, emit: str) -> tuple[list[Job], list[int]]:
    """(distinct jobs, the job of each tile): tiles with the same canonical text share one."""
    jobs: list[Job] = []
    index_of: dict[str, int] = {}
    of_tile = []
    for tile in tiles:
        module = standalone(tile)
        canonical = module.operation.get_asm(enable_debug_info=False)
        job = Job(module.operation.get_asm(enable_debug_info=True), chip.target, chip.name,
                  f"q{len(jobs)}", emit, _root_name(tile), location_of(tile.operation))
        key = job_key(canonical, job)
        if key not in index_of:
            index_of[key] = len(jobs)
            jobs.append(job)
        of_tile.append(index_of[key])
    return jobs, of_tile


def _root_name(tile) -> str:
    try:
        return tile.root.operation.name
    except ValueError:
        return "quartet.tile"


# ---------------------------------------------------------------------------------------------
# Building one job (here or in a worker)


def build(job: Job, context: ir.Context | None = None) -> Result:
    """Build ``job``'s kernel; errors and warnings are returned, never raised."""
    from quartet.dialects import context as quartet_context
    from quartet.runtime import targets

    from . import build as kernel_build
    from .prepare import tiles_of

    result = Result()
    fallbacks = len(kernel_build.GEMM_FALLBACKS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with context or quartet_context(), ir.Location.unknown():
                module = ir.Module.parse(job.text)
                fn = next(iter(module.body.operations))
                tile = tiles_of(fn)[0]
                result.specs = kernel_build.compile_tile(
                    tile, targets.get(job.target, job.chip), job.kernel, job.emit)
        except QuartetError as e:
            result.error = ("quartet", e.message, e.location)
        except Exception as e:          # noqa: BLE001 - a bug: reported with the tile's name
            result.error = ("crash", f"{type(e).__name__}: {e}")
    result.warnings = [str(w.message) for w in caught]
    result.fallbacks = kernel_build.GEMM_FALLBACKS[fallbacks:]
    del kernel_build.GEMM_FALLBACKS[fallbacks:]
    return result


def deliver(job: Job, result: Result) -> list:
    """The job's KernelSpecs; its warnings and GEMM fallbacks replayed here, its error raised."""
    from . import build as kernel_build

    for message in result.warnings:
        warnings.warn(message, stacklevel=3)
    kernel_build.GEMM_FALLBACKS.extend(result.fallbacks)
    if result.error is None:
        return result.specs
    if result.error[0] == "quartet":
        _, message, location = result.error
        if location is None:
            raise QuartetError(f"'{job.op}': {message}", job.location)
        raise QuartetError(message, location)
    raise RuntimeError(f"building the kernel of '{job.op}' ({job.location or 'no location'}) "
                       f"failed: {result.error[1]}")


# ---------------------------------------------------------------------------------------------
# Running jobs: this process and worker processes


def worker_count(jobs: int) -> int:
    """Worker processes for ``jobs`` distinct builds: one per available core beyond this
    process's (``QUARTET_JOBS`` = total processes, this one included), none for few jobs."""
    text = os.environ.get("QUARTET_JOBS")
    if text is not None:
        if not text.isdigit() or int(text) < 1:
            raise QuartetError(f"QUARTET_JOBS must be a positive number of processes, not {text!r}")
        return min(int(text) - 1, max(jobs - 1, 0))
    if jobs < MIN_JOBS_FOR_WORKERS:
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        cores = os.cpu_count() or 1
    return max(0, min(cores - 1, jobs - 1))


class _Worker:
    """A ``python -m quartet.lowering.jobs`` child: pickled jobs in, pickled results out."""

    def __init__(self):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, *WORKER_COMMAND],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log)

    def run(self, job: Job) -> Result:
        try:
            pickle.dump(job, self.proc.stdin)
            self.proc.stdin.flush()
            return pickle.load(self.proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            code = self.proc.wait()
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace").strip().splitlines()[-1:]
            return Result(error=("crash", f"the worker process exited with status {code}"
                                          + (f" ({tail[0]})" if tail else "")))

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


def run_jobs(jobs: list[Job], progress=None, here: bool = True) -> list[list]:
    """The KernelSpecs of every job, in order; ``progress(done, total)`` after each build.

    Jobs are taken from one queue by this process and by the workers (:func:`worker_count`),
    so a slow worker start costs nothing: this process builds meanwhile (``here=False``: the
    workers alone, when there are any)."""
    results: list[Result | None] = [None] * len(jobs)
    todo: queue.Queue = queue.Queue()
    for i in range(len(jobs)):
        todo.put(i)
    lock = threading.Lock()
    done = [0]

    def finished(i: int, result: Result) -> None:
        with lock:
            results[i] = result
            done[0] += 1
            if progress is not None:
                progress(done[0], len(jobs))

    def serve(worker: _Worker) -> None:
        try:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    result = worker.run(jobs[i])
                except Exception as e:      # noqa: BLE001 - reported as the job's failure
                    result = Result(error=("crash", f"{type(e).__name__}: {e}"))
                finished(i, result)
        finally:
            worker.close()

    threads = []
    for _ in range(worker_count(len(jobs))):
        t = threading.Thread(target=serve, args=(_Worker(),), daemon=True)
        t.start()
        threads.append(t)
    while here or not threads:
        try:
            i = todo.get_nowait()
        except queue.Empty:
            break
        finished(i, build(jobs[i]))
    for t in threads:
        t.join()
    for i, result in enumerate(results):
        if result is None:                   # a worker thread that never reported
            results[i] = build(jobs[i])
    return [deliver(job, result) for job, result in zip(jobs, results)]


def _serve() -> None:
    """The worker's loop: one context for every job, results on the original stdout (anything
    else written to stdout, by Python or by native code, goes to stderr)."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from quartet.dialects import context as quartet_context

    context = quartet_context()
    source = sys.stdin.buffer
    while True:
        try:
            job = pickle.load(source)
        except EOFError:
            return
        pickle.dump(build(job, context), out)
        out.flush()


if __name__ == "__main__":       # run as the package's module, so that results unpickle
    from quartet.lowering.jobs import _serve as serve_as_package

    serve_as_package()
