"""``roller-config{target=sm_90 topk=1}``: Roller's tile program on every ``quartet.tile``.

For each tile the pass reads the loops and indexing maps of the tile's root op
(``TileOp.root``, the last linalg op) and writes the schedule attributes that the lowerings
read (``dialects/README.md``): ``block_tile``, ``thread_tile``, ``threads``, ``grid``,
``smem_padding``, ``tensor_core`` and ``target``; with ``topk > 1`` also ``candidates``, the k
best schedules as dictionaries of the same keys, best first (the first one is the main
attributes). The schedule comes from Roller's construction policy (``policy.py``) for the
hardware description of ``target`` (``runtime/targets.py``).

A tile that already carries ``block_tile`` and ``thread_tile`` (a schedule given by hand) keeps
them: :func:`check_fits` validates it against the hardware (threads per block, shared memory,
registers per thread and per block, tensor-core fragment multiples, consistency of ``threads``
and ``grid``) and the pass fills in whichever derived attributes are missing. A schedule that
does not fit, and an op the policy does not support, are one-line errors naming the op.

Every op the zoo models and the benchmark import is configured on every target, fills,
transposes, broadcasts and loop-free scalar generics included (``test_compile_cpu.py`` and
``test_roller_policy.py`` check it). A ``linalg.fill`` tile that ``dialects/linalg_info.py``
cannot describe would be left unconfigured (the verifier, ``dialects/verify.py``, reads a
configured tile's loops through it); ``loop_info`` describes fills itself for the policy.

Fused tiles (``roller-fuse``) are configured by their root op (``TileOp.root``: the op with the
most loops), except row programs, which get the row policy of ``rows.py``: the footprint of the
other ops in the region is not counted (that is Welder's tile propagation, not Roller's).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlir import ir

from quartet.dialects import TileOp
from quartet.dialects import linalg_info
from quartet.dialects.linalg_info import LinalgInfo
from quartet.errors import QuartetError, location_of
from quartet.runtime import targets
from quartet.runtime.targets import Chip
from quartet.passes.analysis import kernels as kernel_analysis
from quartet.passes.base import ModulePass
from quartet.passes.roller import policy, rows
from quartet.passes.roller.policy import Schedule, Unsupported


def loop_info(root) -> LinalgInfo:
    """``linalg_info.info`` of the root op. ``linalg.fill`` (a scalar input, which
    ``linalg_info`` cannot shape) is described here: all loops parallel over its output."""
    op = root.operation
    try:
        return linalg_info.info(op)
    except Exception as e:   # noqa: BLE001  (any failure of the analysis means: unsupported)
        if op.name == "linalg.fill":
            return _fill_info(op)
        raise Unsupported(_why(e)) from None


def _why(error: Exception) -> str:
    """A one-line reason from a failure of ``linalg_info.info``."""
    text = str(error).splitlines()[0] if str(error) else ""
    if isinstance(error, StopIteration):
        return "its loops cannot be read (it does not generalize to a linalg.generic)"
    if "ShapedType" in text:
        return "an operand is a scalar, and dialects/linalg_info.py reads tensor operands only"
    return text or type(error).__name__


def _fill_info(op) -> LinalgInfo:
    out = ir.RankedTensorType(op.results[0].type) if len(op.results) else \
        ir.ShapedType(op.operands[1].type)
    shape = tuple(out.shape)
    if any(d < 0 for d in shape):
        raise Unsupported("dynamic shapes are not supported")
    n = len(shape)
    return LinalgInfo(name=op.name, iterator_types=("parallel",) * n,
                      indexing_maps=((), tuple(f"d{i}" for i in range(n))),
                      operand_shapes=((), shape),
                      element_types=(str(op.operands[0].type), str(out.element_type)),
                      num_inputs=1, loop_ranges=shape, payload=("linalg.yield",))


def _fail(tile, message: str):
    raise QuartetError(f"'quartet.tile' op {message}", location_of(tile.operation))


def _root(tile: TileOp):
    try:
        return tile.root
    except ValueError:
        _fail(tile, "holds no linalg op")


def row_program(tile: TileOp, info: LinalgInfo):
    """The row program of a tile whose loops are the root's: reductions along its innermost
    loop broadcast back (softmax, layer norm after ``roller-fuse``), or an element-wise chain
    of all-parallel ops (the flat layout); else None."""
    ops = [o for o in tile.computation if linalg_info.is_linalg(o)]
    prog = kernel_analysis.row_program(tile)
    if prog is None or tuple(prog.space) != tuple(info.loop_ranges):
        return None
    if prog.reductions == 0:
        if not any(o.name == "linalg.generic" for o in ops) or any(_iterator_kinds(o) != {"parallel"} for o in ops if o.name == "linalg.generic"):
            return None
        return prog
    if len(ops) < 2:
        return None
    return prog


def _iterator_kinds(op) -> set[str]:
    return {"reduction" if "reduction" in str(a) else "parallel"
            for a in ir.ArrayAttr(op.attributes["iterator_types"])}


def configure(tile: TileOp, hw: Chip, topk: int = 1) -> list[Schedule]:
    """The policy's ``topk`` schedules for ``tile`` (best first); QuartetError if unsupported.

    A fused row program (reductions along the innermost loop, broadcast back) gets the row
    policy (``rows.py``, one schedule); every other tile the construction policy on its root."""
    root = _root(tile)
    try:
        info = loop_info(root)
        if hw.kind != "cpu":
            prog = row_program(tile, info)
            if prog is not None and prog.reductions == 0:
                flat = rows.flat_schedule(prog, hw, num_inputs=info.num_inputs,
                                          inner_parallel=info.iterator_types[-1] == "parallel")
                if flat is not None:
                    return [flat]
            elif prog is not None:
                return [rows.schedule(tuple(prog.space), prog.vector, hw,
                                      num_inputs=info.num_inputs,
                                      inner_parallel=info.iterator_types[-1] == "parallel")]
        return policy.construct(info, hw, topk)
    except Unsupported as e:
        _fail(tile, f"with root '{root.operation.name}' is not supported by roller-config "
                    f"on {hw.label}: {e}")


def check_fits(tile: TileOp, hw: Chip) -> Schedule:
    """Validate a hand-given schedule (``block_tile`` and ``thread_tile`` present) against
    ``hw``; return what follows from it. Raises a QuartetError naming the op and the reason."""
    root = _root(tile)
    name = root.operation.name
    block, thread = tile.block_tile, tile.thread_tile

    def fail(reason: str):
        _fail(tile, f"with root '{name}': hand-given schedule does not fit {hw.label}: {reason}")

    if block is None or thread is None:
        fail("a hand-given schedule needs both 'block_tile' and 'thread_tile'")
    try:
        info = loop_info(root)
        model = policy.model_of(info)
    except Unsupported as e:
        _fail(tile, f"with root '{name}' is not supported by roller-config on {hw.label}: {e}")
    n = model.num_loops
    if len(block) != n or len(thread) != n:
        fail(f"'block_tile' and 'thread_tile' need {n} entries (one per loop), got "
             f"{len(block)} and {len(thread)}")
    for i, (b, t) in enumerate(zip(block, thread)):
        if b < 1 or t < 1 or b % t:
            fail(f"block_tile[{i}] = {b} is not a positive multiple of thread_tile[{i}] = {t}")
    target = tile.target
    if target is not None and target != hw.target:
        fail(f"the tile's target is '{target}'")
    tensor_core = tile.tensor_core
    unit = None
    if tensor_core:
        unit = _check_fragments(model, hw, thread, fail)
    padding = tile.smem_padding
    if padding is not None and len(padding) != len(model.inputs):
        fail(f"'smem_padding' needs {len(model.inputs)} entries, got {len(padding)}")
    staged = policy.has_reuse(model)
    s = policy.derive(model, hw, tuple(block), tuple(thread), tensor_core,
                      padding=tuple(padding) if padding is not None else None,
                      policy="given" if staged else "plain", unit=unit)
    if tile.threads is not None and tile.threads != s.threads:
        fail(f"threads = {tile.threads}, but block_tile / thread_tile give {s.threads}")
    if tile.grid is not None and tuple(tile.grid) != s.grid:
        fail(f"grid = {list(tile.grid)}, but the loop ranges and block_tile give {list(s.grid)}")
    if s.threads > hw.max_threads_per_block:
        fail(f"{s.threads} threads per block, at most {hw.max_threads_per_block}")
    if hw.kind != "cpu":
        if s.smem_bytes > hw.smem_per_block:
            fail(f"{s.smem_bytes} bytes of shared memory per block for its staged inputs, "
                 f"at most {hw.smem_per_block}")
        if s.regs_per_thread > hw.max_regs_per_thread:
            fail(f"about {s.regs_per_thread} registers per thread for its thread tile "
                 f"{list(thread)}, at most {hw.max_regs_per_thread}")
        if s.regs_per_thread * s.threads > hw.regs_per_block:
            fail(f"about {s.regs_per_thread * s.threads} registers per block "
                 f"({s.threads} threads x {s.regs_per_thread}), at most {hw.regs_per_block}")
    return s


def _check_fragments(model, hw: Chip, thread, fail) -> tuple[int, ...]:
    if hw.mma_shape is None:
        fail("tensor_core = true, but the target has no tensor cores")
    roles = policy.gemm_roles(model)
    types = {o.dtype for o in model.inputs}
    if roles is None or len(types) != 1 or next(iter(types)) not in ("f16", "bf16"):
        fail("tensor_core = true needs a contraction of two f16 or bf16 inputs")
    for what, loops, frag in (("m", roles.m, hw.mma_shape[0]), ("n", roles.n, hw.mma_shape[1]),
                              ("k", roles.k, hw.mma_shape[2])):
        extent = 1
        for loop in loops:
            extent *= thread[loop]
        if extent % frag:
            fail(f"the warp tile's {what} extent {extent} (loops {list(loops)}) is not a "
                 f"multiple of the mma fragment's {frag}")
    # Registers are counted for one fragment step along K, as the policy counts them.
    unit = policy.tensor_core_unit(model, hw, 1.0)
    if unit is None or any(thread[k] % unit[k] for k in roles.k):
        unit = tuple(thread[k] if k in roles.k else 1 for k in range(model.num_loops))
    return unit


def write_schedule(tile: TileOp, schedules: list[Schedule], hw: Chip,
                   keep: tuple[str, ...] = ()) -> None:
    """Write the first schedule as the tile's attributes (except those in ``keep``) and, when
    there are several, all of them as ``candidates``."""
    attrs = tile.operation.attributes
    with tile.operation.context:
        for key, value in _attributes(schedules[0]).items():
            if key not in keep:
                attrs[key] = value
        if "target" not in keep:
            attrs["target"] = ir.StringAttr.get(hw.target)
        if len(schedules) > 1:
            attrs["candidates"] = ir.ArrayAttr.get(
                [ir.DictAttr.get(_attributes(s)) for s in schedules])


def _attributes(s: Schedule) -> dict[str, ir.Attribute]:
    i64 = ir.IntegerType.get_signless(64)
    return {
        "block_tile": ir.DenseI64ArrayAttr.get(list(s.block_tile)),
        "thread_tile": ir.DenseI64ArrayAttr.get(list(s.thread_tile)),
        "threads": ir.IntegerAttr.get(i64, s.threads),
        "grid": ir.DenseI64ArrayAttr.get(list(s.grid)),
        "smem_padding": ir.DenseI64ArrayAttr.get(list(s.smem_padding)),
        "tensor_core": ir.BoolAttr.get(s.tensor_core),
    }


def _unverifiable_fill(tile: TileOp) -> bool:
    root = _root(tile)
    if root.operation.name != "linalg.fill":
        return False
    try:
        linalg_info.info(root)
    except Exception:   # noqa: BLE001
        return True
    return False


def _tiles(module) -> list[TileOp]:
    found: list[TileOp] = []

    def visit(op):
        if op.operation.name == "quartet.tile":
            found.append(op.operation.opview)
        return ir.WalkResult.ADVANCE

    module.walk(visit)
    return found


@dataclass(frozen=True)
class RollerConfig(ModulePass):
    name = "roller-config"
    summary = ("Roller: give every quartet.tile its tile program for a target (block and "
               "thread tiles, grid, padding, tensor cores); validate hand-given ones")

    target: str = "sm_90"
    chip: str = ""                # default: the target's first chip (runtime/targets.py)
    topk: int = 1

    def __post_init__(self):
        if self.topk < 1:
            raise ValueError(f"topk must be at least 1, got {self.topk}")
        targets.get(self.target, self.chip or None)   # unknown: an error before any IR is read

    def apply(self, module) -> None:
        hw = targets.get(self.target, self.chip or None)
        for tile in _tiles(module):
            if _unverifiable_fill(tile) or tile.kernel == "fused":
                continue       # fused tiles carry Welder's configuration (passes/welder)
            attrs = tile.operation.attributes
            if "block_tile" in attrs or "thread_tile" in attrs:
                given = check_fits(tile, hw)
                keep = tuple(name for name in ("block_tile", "thread_tile", "threads", "grid",
                                               "smem_padding", "tensor_core", "target")
                             if name in attrs)
                write_schedule(tile, [given], hw, keep=keep)
            else:
                write_schedule(tile, configure(tile, hw, self.topk), hw)
            kernel_analysis.record(tile, hw)
