"""A NumPy emulator of Quartet's GPU kernels, to check block programs on a machine with no GPU.

The CPU target (``cpu.py``) checks what a tile *computes*; it cannot check the kernel a GPU
family builds for it - fragment layouts of ``mma.sync``, ``ldmatrix`` addressing, the barriers
between shared-memory writes and reads, the edges of partial tiles. This module runs the kernel
module itself (a ``func.func`` holding one ``gpu.launch``, after
``compose.kernel.inline_block_programs``, before the NVVM lowering) on NumPy arrays:

* **Threads in lockstep.** Every SSA value is an array over all threads of the grid (blocks
  times threads per block), so one op runs once for the whole grid. ``scf.if`` runs both
  branches under per-thread masks and merges their results; ``scf.for`` runs until every active
  thread's loop has ended (bounds may differ between threads: a warp-strided row loop); stores
  and copies only touch active threads' addresses.
* **Warp-collective ops by their PTX definitions.** ``gpu.shuffle`` (xor, idx, down, up) within
  each warp; ``nvgpu.ldmatrix`` (x1/x2/x4, ``.trans``): lanes ``8j .. 8j+7`` give the rows of
  matrix ``j``, lane ``t`` receives elements ``2(t%4)``, ``2(t%4)+1`` of row ``t/4`` (or of
  column ``t/4`` with ``.trans``); ``nvgpu.mma.sync`` m16n8k16 / m16n8k8 with the fragment
  ownership of the PTX ISA (A: rows ``g``, ``g+8`` and columns ``2c, 2c+1`` (+8) with
  ``g = lane/4``, ``c = lane%4``; B: rows ``2c, 2c+1`` (+8) of column ``g``; C: rows ``g``,
  ``g+8``, columns ``2c, 2c+1``), accumulated in f32.
* **Asynchronous copies are asynchronous.** ``nvgpu.device_async_copy`` is queued per commit
  group and lands at ``nvvm.cp.async.wait.group``, so a read before the wait sees the old bytes.
* **Races are errors.** Shared memory is checked per byte between barriers: a byte written by
  one thread and read or written by another in the same barrier interval, or read while another
  thread's copy into it is in flight, raises :class:`Race` naming the op. (Lockstep execution
  would otherwise hide a missing barrier.)

Not emulated (``Unsupported``): wgmma and the LLVM struct accumulators it uses, TMA, mbarriers;
bf16 arithmetic (NumPy has no bf16).

    from quartet.lowering.emulate import run_kernel
    run_kernel(kernel_module, [x, w, out])       # numpy arrays; outputs written in place
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from mlir import ir

from quartet.errors import QuartetError

_DTYPES = {"f16": np.float16, "f32": np.float32, "f64": np.float64, "i1": np.bool_,
           "i8": np.int8, "i16": np.int16, "i32": np.int32, "i64": np.int64,
           "index": np.int64}


class Unsupported(QuartetError):
    """An op or type the emulator does not run."""


class Race(QuartetError):
    """Threads of one block touch the same shared bytes without a barrier between."""


def _dtype(t: ir.Type):
    s = str(t)
    if s not in _DTYPES:
        raise Unsupported(f"the emulator has no type {s}")
    return _DTYPES[s]


@dataclass
class MemRef:
    """A memref value: ``storage`` is a flat typed array (global) or the shared bytes view;
    ``offset`` the element offset (an array over threads for shared views); ``shared``."""

    storage: np.ndarray
    shape: tuple
    strides: tuple
    offset: object
    dtype: object
    shared: bool

    def linear(self, idx: list) -> np.ndarray:
        out = self.offset
        for i, s in zip(idx, self.strides):
            out = out + i * s
        return out


def _row_major(shape) -> tuple:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


class _Grid:
    def __init__(self, grid, block, smem_bytes):
        self.grid, self.block = grid, block
        self.blocks = grid[0] * grid[1] * grid[2]
        self.threads = block
        self.nt = self.blocks * block
        t = np.arange(self.nt, dtype=np.int64)
        self.tid = t % block
        b = t // block
        self.bid = b
        self.bx, self.by, self.bz = b % grid[0], (b // grid[0]) % grid[1], b // (grid[0] * grid[1])
        self.lane = self.tid % 32
        self.smem = np.zeros((self.blocks, max(smem_bytes, 16)), dtype=np.uint8)
        n = self.smem.shape[1]
        self.w_ep = np.full((self.blocks, n), -1, np.int32)
        self.w_th = np.full((self.blocks, n), -1, np.int32)
        self.r_ep = np.full((self.blocks, n), -1, np.int32)
        self.r_th = np.full((self.blocks, n), -1, np.int32)
        self.pend = np.full((self.blocks, n), -1, np.int32)
        self.epoch = 0
        self.groups: list[list] = [[]]       # cp.async: committed groups, then the open one


class _Kernel:
    def __init__(self, fn: ir.Operation):
        self.fn = fn
        launches = []

        def visit(op):
            if op.operation.name == "gpu.launch":
                launches.append(op.operation)
                return ir.WalkResult.SKIP
            return ir.WalkResult.ADVANCE

        fn.walk(visit)
        if len(launches) != 1:
            raise Unsupported(f"a kernel with {len(launches)} gpu.launch ops")
        self.launch = launches[0]


def _const(value: ir.Value):
    owner = value.owner
    if isinstance(owner, ir.Block) or owner.operation.name != "arith.constant":
        raise Unsupported("a launch size that is not a constant")
    return ir.IntegerAttr(owner.operation.attributes["value"]).value


def run_kernel(module, args: list[np.ndarray], *, check_races: bool = True) -> None:
    """Run the one kernel of ``module`` on ``args`` (one array per function argument, in
    order; outputs are written in place)."""
    root = module.operation if hasattr(module, "operation") else module
    fns = [op.operation for op in root.regions[0].blocks[0].operations
           if op.operation.name == "func.func" and len(op.operation.regions[0].blocks)]
    fns = [f for f in fns if any(True for _ in _launches(f))]
    if len(fns) != 1:
        raise Unsupported(f"expected one function with a gpu.launch, found {len(fns)}")
    fn = fns[0]
    launch = next(_launches(fn))
    lop = launch.opview
    grid = tuple(_const(v) for v in (lop.gridSizeX, lop.gridSizeY, lop.gridSizeZ))
    block = tuple(_const(v) for v in (lop.blockSizeX, lop.blockSizeY, lop.blockSizeZ))
    if block[1] != 1 or block[2] != 1:
        raise Unsupported("a 2-D or 3-D thread block")
    smem = _const(lop.dynamicSharedMemorySize) if lop.dynamicSharedMemorySize is not None else 0
    g = _Grid(grid, block[0], smem)
    env: dict = {}
    entry = fn.regions[0].blocks[0]
    if len(args) != len(entry.arguments):
        raise QuartetError(f"the kernel takes {len(entry.arguments)} arguments, {len(args)} given")
    for a, arr in zip(entry.arguments, args):
        mt = ir.MemRefType(a.type)
        if tuple(arr.shape) != tuple(mt.shape):
            raise QuartetError(f"argument of shape {arr.shape} for {mt}")
        env[a] = MemRef(arr.reshape(-1), tuple(mt.shape), _row_major(mt.shape), 0,
                        _dtype(mt.element_type), False)
    # values the launch body reads from the function (constants)
    for op in entry.operations:
        if op.operation.name == "arith.constant":
            _Exec(g, env, check_races).run_op(op.operation, np.ones(g.nt, bool))
    body = launch.regions[0].blocks[0]
    bargs = list(body.arguments)
    env[bargs[0]], env[bargs[1]], env[bargs[2]] = g.bx, g.by, g.bz
    env[bargs[3]] = g.tid
    env[bargs[4]] = env[bargs[5]] = np.zeros(g.nt, np.int64)
    for i, n in enumerate(grid + block):
        env[bargs[6 + i]] = np.full(g.nt, n, np.int64)
    ex = _Exec(g, env, check_races)
    ex.run_block(body, np.ones(g.nt, bool))
    if any(g.groups[:-1]) or g.groups[-1]:
        raise Race("cp.async copies still in flight when the kernel ends")


def _launches(fn):
    found = []

    def visit(op):
        if op.operation.name == "gpu.launch":
            found.append(op.operation)
            return ir.WalkResult.SKIP
        return ir.WalkResult.ADVANCE

    fn.walk(visit)
    return iter(found)


_CMPI = {0: np.equal, 1: np.not_equal, 2: np.less, 3: np.less_equal, 4: np.greater,
         5: np.greater_equal, 6: np.less, 7: np.less_equal, 8: np.greater, 9: np.greater_equal}


def _cmpf(pred: int, a, b):
    unordered = np.isnan(a) | np.isnan(b)
    ops = {1: np.equal, 2: np.greater, 3: np.greater_equal, 4: np.less, 5: np.less_equal,
           6: np.not_equal}
    if pred == 0:
        return np.zeros(np.broadcast(a, b).shape, bool)
    if pred == 15:
        return np.ones(np.broadcast(a, b).shape, bool)
    if pred == 7:
        return ~unordered
    if pred == 14:
        return unordered
    if pred in ops:
        with np.errstate(invalid="ignore"):
            return ops[pred](a, b) & ~unordered
    base = {8: 1, 9: 2, 10: 3, 11: 4, 12: 5, 13: 6}[pred]
    with np.errstate(invalid="ignore"):
        return ops[base](a, b) | unordered


def _erf(x):
    import torch
    return torch.special.erf(torch.from_numpy(np.asarray(x, np.float32))).numpy().astype(x.dtype)


_MATH = {"math.exp": np.exp, "math.exp2": np.exp2, "math.log": np.log, "math.log2": np.log2,
         "math.sqrt": np.sqrt, "math.rsqrt": lambda x: 1 / np.sqrt(x), "math.tanh": np.tanh,
         "math.absf": np.abs, "math.erf": _erf, "math.sin": np.sin, "math.cos": np.cos,
         "math.floor": np.floor, "math.ceil": np.ceil, "math.log1p": np.log1p,
         "math.expm1": np.expm1}


class _Exec:
    def __init__(self, g: _Grid, env: dict, check_races: bool):
        self.g, self.env, self.check = g, env, check_races

    # -- values -----------------------------------------------------------------------------
    def get(self, v):
        return self.env[v]

    def run_block(self, block: ir.Block, mask: np.ndarray):
        """Run the ops of ``block`` up to its terminator; return the terminator's operands."""
        for op in block.operations:
            op = op.operation
            if op.name in ("scf.yield", "gpu.terminator", "gpu.yield", "func.return"):
                return [self.get(v) for v in op.operands]
            self.run_op(op, mask)
        return []

    def run_op(self, op: ir.Operation, mask: np.ndarray) -> None:
        name = op.name
        handler = getattr(self, "op_" + name.replace(".", "_"), None)
        with np.errstate(all="ignore"):
            if handler is not None:
                outs = handler(op, mask)
            elif name in _MATH:
                x = self.get(op.operands[0])
                outs = [_MATH[name](x).astype(x.dtype)]
            elif name.startswith("arith."):
                outs = [self.arith(op)]
            else:
                raise Unsupported(f"the emulator does not run '{name}'")
        for r, v in zip(op.results, outs):
            self.env[r] = v

    # -- affine -----------------------------------------------------------------------------
    def op_affine_apply(self, op, mask):
        """One-result affine map over index operands (dims, then symbols), lane by lane."""
        amap = ir.AffineMapAttr(op.attributes["map"]).value
        values = [self.get(v) for v in op.operands]
        dims, syms = values[:amap.n_dims], values[amap.n_dims:]
        (expr,) = amap.results
        return [np.asarray(_affine(expr, dims, syms), dtype=np.int64)]

    # -- arith ------------------------------------------------------------------------------
    def op_arith_constant(self, op, mask):
        attr = op.attributes["value"]
        t = op.results[0].type
        if isinstance(t, ir.VectorType):
            vt = ir.VectorType(t)
            dt = _dtype(vt.element_type)
            dense = ir.DenseElementsAttr(attr)
            if dense.is_splat:
                s = dense.get_splat_value()
                val = s.value if hasattr(s, "value") else float(str(s).split(":")[0])
                return [np.full((1,) + tuple(vt.shape), val, dt)]
            return [np.array(np.asarray(dense), dt).reshape((1,) + tuple(vt.shape))]
        dt = _dtype(t)
        if isinstance(attr, ir.FloatAttr):
            return [np.full(1, ir.FloatAttr(attr).value, dt)]
        if isinstance(attr, ir.BoolAttr):
            return [np.full(1, ir.BoolAttr(attr).value, bool)]
        val = ir.IntegerAttr(attr).value
        if dt is np.bool_:
            val = bool(val & 1)
        return [np.full(1, val, dt)]

    def arith(self, op):
        name = op.name.split(".", 1)[1]
        xs = [self.get(v) for v in op.operands]
        t = op.results[0].type
        et = ir.VectorType(t).element_type if isinstance(t, ir.VectorType) else t
        dt = _dtype(et)
        a = xs[0]
        b = xs[1] if len(xs) > 1 else None
        if name in ("addi", "addf"):
            return (a + b).astype(dt)
        if name in ("subi", "subf"):
            return (a - b).astype(dt)
        if name in ("muli", "mulf"):
            return (a * b).astype(dt)
        if name == "divf":
            return (a / b).astype(dt)
        if name in ("divui", "divsi", "floordivsi"):
            return np.floor_divide(a, np.where(b == 0, 1, b)).astype(dt)
        if name in ("remui", "remsi"):
            return np.remainder(a, np.where(b == 0, 1, b)).astype(dt)
        if name == "ceildivui" or name == "ceildivsi":
            bb = np.where(b == 0, 1, b)
            return (-np.floor_divide(-a, bb)).astype(dt)
        if name == "negf":
            return (-a).astype(dt)
        if name in ("maximumf",):
            return np.maximum(a, b).astype(dt)
        if name in ("minimumf",):
            return np.minimum(a, b).astype(dt)
        if name == "maxnumf":
            return np.fmax(a, b).astype(dt)
        if name == "minnumf":
            return np.fmin(a, b).astype(dt)
        if name in ("maxui", "maxsi"):
            return np.maximum(a, b).astype(dt)
        if name in ("minui", "minsi"):
            return np.minimum(a, b).astype(dt)
        if name == "andi":
            return (a & b).astype(dt)
        if name == "ori":
            return (a | b).astype(dt)
        if name == "xori":
            return (a ^ b).astype(dt)
        if name in ("shrui", "shrsi"):
            return (a >> b).astype(dt)
        if name == "shli":
            return (a << b).astype(dt)
        if name == "select":
            c = xs[0]
            if c.ndim < xs[1].ndim:
                c = c.reshape(c.shape + (1,) * (xs[1].ndim - c.ndim))
            return np.where(c, xs[1], xs[2]).astype(dt)
        if name == "cmpi":
            pred = ir.IntegerAttr(op.attributes["predicate"]).value
            return _CMPI[pred](a, b)
        if name == "cmpf":
            pred = ir.IntegerAttr(op.attributes["predicate"]).value
            return _cmpf(pred, a, b)
        if name in ("extf", "truncf", "index_cast", "index_castui", "extsi", "trunci",
                    "sitofp", "fptosi", "fptoui", "uitofp"):
            return a.astype(dt)
        if name == "extui":
            if a.dtype == np.bool_:
                return a.astype(dt)
            return (a.astype(np.int64) & ((1 << (a.dtype.itemsize * 8)) - 1)).astype(dt)
        if name == "bitcast":
            return a.view(dt)
        if name == "fma" or name == "math.fma":
            return (a * b + xs[2]).astype(dt)
        raise Unsupported(f"the emulator does not run 'arith.{name}'")

    def op_math_fma(self, op, mask):
        a, b, c = (self.get(v) for v in op.operands)
        return [(a * b + c).astype(a.dtype)]

    def op_math_powf(self, op, mask):
        a, b = (self.get(v) for v in op.operands)
        return [np.power(a, b).astype(a.dtype)]

    # -- vector -----------------------------------------------------------------------------
    def op_vector_extract(self, op, mask):
        src = self.get(op.operands[0])
        pos = list(ir.DenseI64ArrayAttr(op.attributes["static_position"]))
        if len(op.operands) > 1:
            raise Unsupported("vector.extract with dynamic positions")
        return [np.array(src[(slice(None),) + tuple(pos)])]

    def op_vector_insert(self, op, mask):
        val, dst = self.get(op.operands[0]), self.get(op.operands[1])
        pos = list(ir.DenseI64ArrayAttr(op.attributes["static_position"]))
        n = max(val.shape[0], dst.shape[0])
        out = np.array(np.broadcast_to(dst, (n,) + dst.shape[1:]))
        out[(slice(None),) + tuple(pos)] = val
        return [out]

    def op_vector_from_elements(self, op, mask):
        vt = ir.VectorType(op.results[0].type)
        xs = [self.get(v) for v in op.operands]
        n = max(x.shape[0] for x in xs)
        flat = np.stack([np.broadcast_to(x, (n,)) for x in xs], axis=1)
        return [flat.reshape((n,) + tuple(vt.shape)).astype(_dtype(vt.element_type))]

    def op_vector_broadcast(self, op, mask):
        vt = ir.VectorType(op.results[0].type)
        x = self.get(op.operands[0])
        shape = tuple(vt.shape)
        x = x.reshape(x.shape + (1,) * (len(shape) + 1 - x.ndim))
        return [np.array(np.broadcast_to(x, (x.shape[0],) + shape))]

    op_vector_splat = op_vector_broadcast

    def op_vector_reduction(self, op, mask):
        x = self.get(op.operands[0])
        kind = str(op.attributes["kind"])
        axes = tuple(range(1, x.ndim))
        if "maxnumf" in kind:
            r = np.fmax.reduce(x.reshape(x.shape[0], -1), axis=1)
        elif "minnumf" in kind:
            r = np.fmin.reduce(x.reshape(x.shape[0], -1), axis=1)
        elif "maximumf" in kind or "maxsi" in kind or "maxui" in kind:
            r = np.max(x, axis=axes)
        elif "minimumf" in kind or "minsi" in kind or "minui" in kind:
            r = np.min(x, axis=axes)
        elif "add" in kind:
            r = np.sum(x, axis=axes, dtype=x.dtype)
        elif "mul" in kind:
            r = np.prod(x, axis=axes, dtype=x.dtype)
        else:
            raise Unsupported(f"vector.reduction {kind}")
        if len(op.operands) > 1:
            acc = self.get(op.operands[1])
            r = r + acc if "add" in kind else (r * acc if "mul" in kind else
                                                np.maximum(r, acc) if "max" in kind else
                                                np.minimum(r, acc))
        return [r.astype(x.dtype)]

    def op_vector_load(self, op, mask):
        m = self.get(op.operands[0])
        vt = ir.VectorType(op.results[0].type)
        n = math.prod(vt.shape)
        base = m.linear([self.get(v) for v in op.operands[1:]])
        return [self.load(m, base, n, mask, op).reshape((-1,) + tuple(vt.shape))]

    def op_vector_store(self, op, mask):
        val = self.get(op.operands[0])
        m = self.get(op.operands[1])
        base = m.linear([self.get(v) for v in op.operands[2:]])
        n = math.prod(val.shape[1:])
        self.store(m, base, val.reshape(val.shape[0], n), mask, op)
        return []

    # -- memref -----------------------------------------------------------------------------
    def op_memref_load(self, op, mask):
        m = self.get(op.operands[0])
        base = m.linear([self.get(v) for v in op.operands[1:]])
        return [self.load(m, base, 1, mask, op)[:, 0]]

    def op_memref_store(self, op, mask):
        val = self.get(op.operands[0])
        m = self.get(op.operands[1])
        base = m.linear([self.get(v) for v in op.operands[2:]])
        self.store(m, base, val.reshape(-1, 1), mask, op)
        return []

    def op_memref_collapse_shape(self, op, mask):
        m = self.get(op.operands[0])
        mt = ir.MemRefType(op.results[0].type)
        if m.strides != _row_major(m.shape):
            raise Unsupported("collapse_shape of a strided memref")
        return [MemRef(m.storage, tuple(mt.shape), _row_major(mt.shape), m.offset, m.dtype,
                       m.shared)]

    op_memref_expand_shape = op_memref_collapse_shape

    def op_gpu_dynamic_shared_memory(self, op, mask):
        return [MemRef(self.g.smem, (self.g.smem.shape[1],), (1,), 0, np.uint8, True)]

    def op_memref_view(self, op, mask):
        m = self.get(op.operands[0])
        mt = ir.MemRefType(op.results[0].type)
        byte = self.get(op.operands[1])
        dt = _dtype(mt.element_type)
        size = np.dtype(dt).itemsize
        byte = np.asarray(byte) + m.offset
        if np.any(byte % size):
            raise Unsupported("a shared-memory view not aligned to its element")
        return [MemRef(m.storage, tuple(mt.shape), _row_major(mt.shape), byte // size, dt,
                       True)]

    def op_memref_extract_aligned_pointer_as_index(self, op, mask):
        return [np.zeros(1, np.int64)]

    # -- memory access ----------------------------------------------------------------------
    def _shared_index(self, m: MemRef, elems: np.ndarray):
        size = np.dtype(m.dtype).itemsize
        return elems * size, size

    def load(self, m: MemRef, base, n: int, mask, op) -> np.ndarray:
        g = self.g
        base = np.broadcast_to(np.asarray(base, np.int64), (g.nt,))
        idx = base[:, None] + np.arange(n)[None, :]
        if m.shared:
            typed = g.smem.view(m.dtype)
            bad = mask & ((idx.min(axis=1) < 0) | (idx.max(axis=1) >= typed.shape[1]))
            if bad.any():
                raise QuartetError(f"'{op.name}' reads shared memory out of bounds")
            safe = np.where(mask[:, None], idx, 0)
            if self.check:
                self._read(safe, np.dtype(m.dtype).itemsize, mask, op)
            return typed[g.bid[:, None], safe]
        bad = mask & ((idx.min(axis=1) < 0) | (idx.max(axis=1) >= m.storage.shape[0]))
        if bad.any():
            t = int(np.argmax(bad))
            raise QuartetError(f"'{op.name}' reads global memory out of bounds (thread {t}, "
                               f"element {int(idx[t, 0])} of {m.storage.shape[0]})")
        safe = np.where(mask[:, None], idx, 0)
        return m.storage[safe]

    def store(self, m: MemRef, base, vals: np.ndarray, mask, op) -> None:
        g = self.g
        n = vals.shape[1]
        base = np.broadcast_to(np.asarray(base, np.int64), (g.nt,))
        idx = base[:, None] + np.arange(n)[None, :]
        vals = np.broadcast_to(vals, (g.nt, n)).astype(m.dtype)
        lanes = np.nonzero(mask)[0]
        if m.shared:
            typed = g.smem.view(m.dtype)
            if lanes.size and (idx[lanes].min() < 0 or idx[lanes].max() >= typed.shape[1]):
                raise QuartetError(f"'{op.name}' writes shared memory out of bounds")
            if self.check:
                self._write(idx, np.dtype(m.dtype).itemsize, mask, op)
            typed[g.bid[lanes][:, None], idx[lanes]] = vals[lanes]
            return
        if lanes.size and (idx[lanes].min() < 0 or idx[lanes].max() >= m.storage.shape[0]):
            raise QuartetError(f"'{op.name}' writes global memory out of bounds")
        m.storage[idx[lanes]] = vals[lanes]

    # -- races ------------------------------------------------------------------------------
    def _bytes(self, idx, size, mask):
        lanes = np.nonzero(mask)[0]
        b = (idx[lanes][:, :, None] * size + np.arange(size)[None, None, :]).reshape(len(lanes), -1)
        return lanes, b

    def _read(self, idx, size, mask, op):
        g = self.g
        lanes, b = self._bytes(idx, size, mask)
        if not lanes.size:
            return
        blk = g.bid[lanes][:, None]
        t = g.tid[lanes][:, None]
        bad = ((g.w_ep[blk, b] == g.epoch) & (g.w_th[blk, b] != t)) | \
            ((g.pend[blk, b] >= 0) & (g.pend[blk, b] != t))
        if bad.any():
            raise Race(f"'{op.name}' reads shared bytes another thread wrote since the last "
                       f"barrier (or is copying into)")
        prev_ep, prev_th = g.r_ep[blk, b], g.r_th[blk, b]
        new_th = np.where((prev_ep == g.epoch) & (prev_th != t), -2, t)
        g.r_ep[blk, b] = g.epoch
        g.r_th[blk, b] = new_th

    def _write(self, idx, size, mask, op, pending=False):
        g = self.g
        lanes, b = self._bytes(idx, size, mask)
        if not lanes.size:
            return
        blk = g.bid[lanes][:, None]
        t = g.tid[lanes][:, None]
        bad = ((g.w_ep[blk, b] == g.epoch) & (g.w_th[blk, b] != t)) | \
            ((g.r_ep[blk, b] == g.epoch) & (g.r_th[blk, b] != t)) | \
            ((g.pend[blk, b] >= 0) & (g.pend[blk, b] != t))
        flat = (blk * g.smem.shape[1] + b).reshape(-1)
        if bad.any() or len(np.unique(flat)) != flat.size:
            raise Race(f"'{op.name}' writes shared bytes another thread touched since the "
                       f"last barrier")
        if pending:
            g.pend[blk, b] = t
        else:
            g.w_ep[blk, b] = g.epoch
            g.w_th[blk, b] = t

    def op_gpu_barrier(self, op, mask):
        if not mask.all() and mask.any():
            # every thread of a block must reach the barrier
            m = mask.reshape(self.g.blocks, -1)
            if (m.any(axis=1) & ~m.all(axis=1)).any():
                raise Race("a barrier some threads of a block do not reach")
        self.g.epoch += 1
        return []

    def op_nvvm_barrier(self, op, mask):
        return self.op_gpu_barrier(op, mask) if not op.operands else self._counted(op, mask)

    def _counted(self, op, mask):
        self.g.epoch += 1
        return []

    op_nvvm_barrier0 = op_gpu_barrier

    # -- gpu --------------------------------------------------------------------------------
    def op_gpu_thread_id(self, op, mask):
        dim = str(op.attributes["dimension"])
        return [self.g.tid if dim.endswith("x>") else np.zeros(self.g.nt, np.int64)]

    def op_gpu_block_id(self, op, mask):
        dim = str(op.attributes["dimension"])
        g = self.g
        return [g.bx if dim.endswith("x>") else g.by if dim.endswith("y>") else g.bz]

    def op_gpu_block_dim(self, op, mask):
        dim = str(op.attributes["dimension"])
        return [np.full(1, self.g.threads if dim.endswith("x>") else 1, np.int64)]

    def op_gpu_grid_dim(self, op, mask):
        dim = str(op.attributes["dimension"])
        i = {"x": 0, "y": 1, "z": 2}[dim[-2]]
        return [np.full(1, self.g.grid[i], np.int64)]

    def op_gpu_shuffle(self, op, mask):
        val = np.broadcast_to(self.get(op.operands[0]), (self.g.nt,))
        off = np.broadcast_to(self.get(op.operands[1]), (self.g.nt,)).astype(np.int64)
        width = np.broadcast_to(self.get(op.operands[2]), (self.g.nt,)).astype(np.int64)
        mode = str(op.attributes["mode"])
        lane = self.g.lane
        base = np.arange(self.g.nt) - lane            # first thread of the warp
        seg = lane - lane % width
        if "xor" in mode:
            src = lane ^ off
        elif "idx" in mode:
            src = seg + off
        elif "down" in mode:
            src = lane + off
        else:
            src = lane - off
        valid = (src >= seg) & (src < seg + width)
        src = np.where(valid, src, lane)
        return [val[base + src], valid]

    # -- nvgpu / nvvm -----------------------------------------------------------------------
    def op_nvgpu_device_async_copy(self, op, mask):
        dst, src = self.get(op.operands[0]), None
        rank_dst = len(dst.shape)
        dst_idx = [self.get(v) for v in op.operands[1:1 + rank_dst]]
        src = self.get(op.operands[1 + rank_dst])
        rank_src = len(src.shape)
        src_idx = [self.get(v) for v in op.operands[2 + rank_dst:2 + rank_dst + rank_src]]
        n = ir.IntegerAttr(op.attributes["dstElements"]).value
        rest = list(op.operands)[2 + rank_dst + rank_src:]
        count = self.get(rest[0]) if rest else np.full(1, n, np.int64)
        g = self.g
        count = np.broadcast_to(np.asarray(count, np.int64), (g.nt,))
        sbase = np.broadcast_to(np.asarray(src.linear(src_idx), np.int64), (g.nt,))
        dbase = np.broadcast_to(np.asarray(dst.linear(dst_idx), np.int64), (g.nt,))
        lanes = np.nonzero(mask)[0]
        e = np.arange(n)[None, :]
        sidx = sbase[:, None] + e
        take = e < count[:, None]
        rd = mask[:, None] & take
        bad = rd & ((sidx < 0) | (sidx >= src.storage.shape[0]))
        if bad.any():
            raise QuartetError("'nvgpu.device_async_copy' reads global memory out of bounds")
        vals = np.where(take, src.storage[np.where(rd, sidx, 0)], 0).astype(dst.dtype)
        didx = dbase[:, None] + e
        if self.check:
            self._write(didx, np.dtype(dst.dtype).itemsize, mask, op, pending=True)
        g.groups[-1].append((dst, didx, vals, mask.copy()))
        del lanes
        return [np.zeros(1, np.int64)]

    def op_nvvm_cp_async_commit_group(self, op, mask):
        self.g.groups.append([])
        return []

    def op_nvvm_cp_async_wait_group(self, op, mask):
        n = ir.IntegerAttr(op.attributes["n"]).value
        g = self.g
        committed = g.groups[:-1]
        keep = committed[len(committed) - n:] if n else []
        done = committed[:len(committed) - n] if n <= len(committed) else []
        for group in done:
            for dst, didx, vals, m in group:
                lanes = np.nonzero(m)[0]
                typed = g.smem.view(dst.dtype)
                typed[g.bid[lanes][:, None], didx[lanes]] = vals[lanes]
                if self.check:
                    size = np.dtype(dst.dtype).itemsize
                    ln, b = self._bytes(didx, size, m)
                    blk = g.bid[ln][:, None]
                    g.pend[blk, b] = -1
                    g.w_ep[blk, b] = g.epoch
                    g.w_th[blk, b] = g.tid[ln][:, None]
        g.groups = keep + [g.groups[-1]]
        return []

    def op_nvvm_fence_proxy(self, op, mask):
        return []

    def op_nvgpu_ldmatrix(self, op, mask):
        m = self.get(op.operands[0])
        base = np.broadcast_to(np.asarray(m.linear([self.get(v) for v in op.operands[1:]]),
                                          np.int64), (self.g.nt,))
        tiles = ir.IntegerAttr(op.attributes["numTiles"]).value
        trans = ir.BoolAttr(op.attributes["transpose"]).value
        g = self.g
        if not mask.all():
            raise Unsupported("ldmatrix under a divergent branch")
        # Rows: lane 8j+r gives row r of matrix j (8 elements from its address).
        rows = base[:, None] + np.arange(8)[None, :]              # [nt, 8]
        data = self.load(m, base, 8, np.ones(g.nt, bool), op)     # [nt, 8]
        warp0 = np.arange(g.nt) - g.lane
        lane = g.lane
        out = np.zeros((g.nt, tiles, 2), dtype=data.dtype)
        for j in range(tiles):
            for e in range(2):
                if not trans:     # row lane/4, elements 2(lane%4)+e
                    src_lane = 8 * j + lane // 4
                    out[:, j, e] = data[warp0 + src_lane, 2 * (lane % 4) + e]
                else:             # column lane/4 of rows 2(lane%4)+e
                    src_lane = 8 * j + 2 * (lane % 4) + e
                    out[:, j, e] = data[warp0 + src_lane, lane // 4]
        del rows
        return [out]

    def op_nvgpu_mma_sync(self, op, mask):
        a, b, c = (np.broadcast_to(self.get(v), (self.g.nt,) + self.get(v).shape[1:])
                   for v in op.operands[:3])
        shape = [ir.IntegerAttr(x).value for x in ir.ArrayAttr(op.attributes["mmaShape"])]
        if shape[0] != 16 or shape[1] != 8 or shape[2] not in (8, 16) or a.dtype != np.float16:
            raise Unsupported(f"mma.sync {shape} on {a.dtype}")
        if not mask.all():
            raise Unsupported("mma.sync under a divergent branch")
        g = self.g
        nw = g.nt // 32
        lane = np.arange(32)
        gid, tig = lane // 4, lane % 4
        A = np.zeros((nw, 16, shape[2]), np.float32)
        B = np.zeros((nw, shape[2], 8), np.float32)
        C = np.zeros((nw, 16, 8), np.float32)
        aw = a.reshape(nw, 32, *a.shape[1:]).astype(np.float32)
        bw = b.reshape(nw, 32, *b.shape[1:]).astype(np.float32)
        cw = c.reshape(nw, 32, *c.shape[1:]).astype(np.float32)
        for e in range(2):
            A[:, gid, 2 * tig + e] = aw[:, :, 0, e]
            A[:, gid + 8, 2 * tig + e] = aw[:, :, 1, e]
            if shape[2] == 16:
                A[:, gid, 2 * tig + e + 8] = aw[:, :, 2, e]
                A[:, gid + 8, 2 * tig + e + 8] = aw[:, :, 3, e]
            B[:, 2 * tig + e, gid] = bw[:, :, 0, e]
            if shape[2] == 16:
                B[:, 2 * tig + e + 8, gid] = bw[:, :, 1, e]
            C[:, gid, 2 * tig + e] = cw[:, :, 0, e]
            C[:, gid + 8, 2 * tig + e] = cw[:, :, 1, e]
        D = np.matmul(A.astype(np.float64), B.astype(np.float64)).astype(np.float32) + C
        out = np.zeros((nw, 32, 2, 2), np.float32)
        for e in range(2):
            out[:, :, 0, e] = D[:, gid, 2 * tig + e]
            out[:, :, 1, e] = D[:, gid + 8, 2 * tig + e]
        return [out.reshape(g.nt, 2, 2)]

    # -- scf --------------------------------------------------------------------------------
    def op_scf_if(self, op, mask):
        cond = np.broadcast_to(self.get(op.operands[0]), (self.g.nt,))
        then_mask = mask & cond
        else_mask = mask & ~cond
        then_vals = self.run_block(op.regions[0].blocks[0], then_mask) \
            if then_mask.any() else None
        else_vals = None
        if len(op.regions) > 1 and len(op.regions[1].blocks) and else_mask.any():
            else_vals = self.run_block(op.regions[1].blocks[0], else_mask)
        outs = []
        for k, r in enumerate(op.results):
            tv = then_vals[k] if then_vals is not None else None
            ev = else_vals[k] if else_vals is not None else None
            if tv is None:
                outs.append(ev)
            elif ev is None:
                outs.append(tv)
            else:
                c = cond.reshape((-1,) + (1,) * (max(np.ndim(tv), np.ndim(ev)) - 1))
                outs.append(np.where(c, tv, ev))
        return outs

    def op_scf_for(self, op, mask):
        lb, ub, step = (np.broadcast_to(self.get(v), (self.g.nt,)).astype(np.int64)
                        for v in op.operands[:3])
        carried = [self.get(v) for v in op.operands[3:]]
        body = op.regions[0].blocks[0]
        iv_arg = body.arguments[0]
        iv = lb.copy()
        while True:
            active = mask & (iv < ub)
            if not active.any():
                break
            self.env[iv_arg] = iv
            for a, v in zip(list(body.arguments)[1:], carried):
                self.env[a] = v
            new = self.run_block(body, active)
            merged = []
            for old, nv in zip(carried, new):
                shape = np.broadcast_shapes(np.shape(old), np.shape(nv))
                c = active.reshape((-1,) + (1,) * (len(shape) - 1))
                merged.append(np.where(c, nv, np.broadcast_to(old, shape)))
            carried = merged
            iv = iv + step
        return carried

    def op_scf_execute_region(self, op, mask):
        return self.run_block(op.regions[0].blocks[0], mask)

    def op_llvm_mlir_zero(self, op, mask):
        raise Unsupported("wgmma accumulators (LLVM structs) are not emulated")


def _affine(e, dims, syms):
    """The value of affine expression ``e`` (floor division and modulo as MLIR defines them:
    rounding toward negative infinity, a result of the divisor's sign)."""
    e = e.maybe_downcast()
    if isinstance(e, ir.AffineDimExpr):
        return dims[e.position]
    if isinstance(e, ir.AffineSymbolExpr):
        return syms[e.position]
    if isinstance(e, ir.AffineConstantExpr):
        return np.int64(e.value)
    for kind, fn in ((ir.AffineAddExpr, np.add), (ir.AffineMulExpr, np.multiply),
                     (ir.AffineModExpr, np.mod), (ir.AffineFloorDivExpr, np.floor_divide),
                     (ir.AffineCeilDivExpr, lambda a, b: -np.floor_divide(-a, b))):
        if isinstance(e, kind):
            return fn(np.asarray(_affine(e.lhs, dims, syms), np.int64),
                      np.asarray(_affine(e.rhs, dims, syms), np.int64))
    raise Unsupported(f"the emulator does not evaluate the affine expression {e}")
