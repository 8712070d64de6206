"""The CPU twin of a GPU artifact: the same manifest, every kernel replaced by its tile on the CPU.

A GPU artifact's host program (buffers, views at byte offsets, copies, host ``while``/``if``
steps reading predicates back, outputs) is where ``lowering/host.py`` and the artifact writer can
go wrong in ways no single-kernel test sees. The twin checks it on a machine with no GPU: each
kernel of the artifact is the lowering of one tile, and the CPU target (``lowering/cpu.py``)
compiles that same tile into a shared object whose entry takes the same pointers in the same
order (the tile's tensor inputs in order of first use, then its results). So the twin keeps the
GPU manifest's inputs, outputs, buffers, weights and program unchanged, swaps each kernel's
binary for the tile's ``.so`` and runs through ``quartet.runtime``'s interpreter on its CPU
backend. Only the kernels' own code differs from what runs on the GPU.

A persistent kernel (Rammer: one kernel for the tasks of a ``quartet.uvirtual``) becomes its
tasks, run one after the other in the schedule's order, each on the kernel arguments the
manifest's ``persistent.tasks`` gives it - the same buffers, views and in-place concatenations
the GPU kernel uses: what the CPU can check of a schedule is that its order and its bindings
compute the model (its device-side waits are the checker's, ``compose/vdevice.py``).

Assumes: one kernel per tile (every builder makes one launch) or per uvirtual, in the order
``lowering.prepare.tiles_of`` lists the tiles of the prepared module.
"""

from __future__ import annotations

from mlir import ir

from quartet.errors import QuartetError


def tile_functions(quartet_text: str, entry: str = "forward") -> list[str]:
    """One ``func.func @forward`` per tile of the (pre-lowering) module text, in the order the
    GPU lowering compiles them: arguments = the tile's kernel inputs, results = its results."""
    from quartet.dialects import context as quartet_context
    from quartet.lowering.prepare import prepare, tiles_of

    texts = []
    with quartet_context(), ir.Location.unknown():
        module = ir.Module.parse(quartet_text)
        prepare(module)
        for fn in module.body.operations:
            if fn.operation.name != "func.func":
                continue
            for tile in tiles_of(fn):
                texts.append(_tile_function(tile))
    return texts


def _tile_function(tile) -> str:
    from mlir.dialects import func

    from quartet.dialects import remap
    from quartet.lowering.kernels import kernel_inputs

    inputs = kernel_inputs(tile)
    results = [r.type for r in tile.results]
    m = ir.Module.create()
    with ir.InsertionPoint(m.body):
        f = func.FuncOp("forward", ([v.type for v in inputs], results))
        entry = f.add_entry_block()
    env = dict(zip(inputs, entry.arguments))
    with ir.InsertionPoint(entry):
        for v in tile.inputs:
            if v in env:
                continue
            owner = v.owner
            owner = owner.operation if hasattr(owner, "operation") else owner
            if isinstance(v.owner, ir.Block) or owner.name not in ("arith.constant",
                                                                  "tensor.empty"):
                raise QuartetError(f"tile captures a value of '{owner.name}' that is no kernel "
                                   f"input")
            env[v] = owner.clone().results[0]
        clone = tile.operation.clone()
        remap(clone, env)
        func.ReturnOp(list(clone.results))
    return str(m)


def cpu_twin(writer, quartet_text: str, opt_level: int = 0):
    """An ``ArtifactWriter`` for target ``cpu`` with ``writer``'s program and the tiles of
    ``quartet_text`` (``CompileResult.quartet``) as kernels."""
    from quartet.lowering import cpu
    from quartet.runtime.artifact import ArtifactWriter
    from quartet.runtime.manifest import TensorMapArg

    functions = tile_functions(quartet_text)
    tiles = sum(len(k.persistent.tasks) if k.persistent else 1 for k in writer.kernels)
    if len(functions) != tiles:
        raise QuartetError(f"{len(writer.kernels)} kernels ({tiles} tasks) for "
                           f"{len(functions)} tiles: the twin needs one kernel per tile")
    twin = ArtifactWriter("cpu", producer=writer.producer)
    twin.inputs, twin.outputs = list(writer.inputs), list(writer.outputs)
    twin.buffers, twin.weights = list(writer.buffers), list(writer.weights)
    twin._weight_bytes = bytearray(writer._weight_bytes)
    texts = iter(functions)
    expand = {}
    for k in writer.kernels:
        runs = [(k.name, k.args)] if k.persistent is None else \
            [(f"{k.name}_t{i}", tuple(k.args[a] for a in t.args))
             for i, t in enumerate(k.persistent.tasks)]
        for name, args in runs:
            # TMA tensor maps are how a GPU kernel reads its inputs; the CPU tile reads them direct
            args = tuple(a for a in args if not isinstance(a, TensorMapArg))
            spec = cpu.cpu_kernel(next(texts), name=f"tile_{name}", opt_level=opt_level)
            if len(spec.args) != len(args):
                raise QuartetError(f"kernel {name} takes {len(args)} arguments, its tile on "
                                   f"the CPU {len(spec.args)}")
            twin.add_kernel(name, spec.binary, spec.entry, (1, 1, 1), (1, 1, 1), args=args,
                            binary_format="so")
        expand[k.name] = [name for name, _ in runs] if not (k.persistent and
                                                             k.persistent.program) \
            else device_program_steps(k, [name for name, _ in runs])
    twin.program = _expanded(writer.program, expand)
    return twin


def device_program_steps(kernel, task_kernels: list[str]) -> list:
    """A Grinder kernel's device program (``persistent.program``, runtime/FORMAT.md) as host
    steps: each wave launches its tasks' kernels in order, copies and predicates name the
    kernel's argument buffers at their offsets, a bounded while stops at its bound (as the
    device loop does) and reports it."""
    import json

    from quartet.runtime.manifest import Copy, If, Launch, Loop, Predicate, While

    args = kernel.args

    def at(position: int):
        a = args[position]
        return a.buffer, a.offset

    def predicate(step):
        buffer, offset = at(step["pred"])
        return Predicate(buffer, step["dtype"], offset)

    def steps(items) -> list:
        out = []
        for s in items:
            op = s["op"]
            if op == "wave":
                out += [Launch(task_kernels[t]) for t in s["tasks"]]
            elif op == "copies":
                for c in s["copies"]:
                    (dst, dst_at), (src, src_at) = at(c["dst"]), at(c["src"])
                    out.append(Copy(dst, src, c["size"], dst_at, src_at))
            elif op == "for":
                out.append(Loop(s["count"], tuple(steps(s["body"]))))
            elif op == "if":
                out.append(If(predicate(s), tuple(steps(s["then"])), tuple(steps(s["else"]))))
            elif op == "while":
                out.append(While(tuple(steps(s["cond"])), predicate(s), tuple(steps(s["body"])),
                                 s.get("bound"), "stop" if s.get("bound") else "error"))
            else:
                raise QuartetError(f"kernel {kernel.name}: unknown device step {op!r}")
        return out

    return steps(json.loads(kernel.persistent.program))


def _expanded(steps, expand: dict) -> list:
    """``steps`` with each launch of a persistent kernel replaced by launches of its tasks."""
    from dataclasses import replace

    from quartet.runtime.manifest import If, Launch, Loop, While

    out = []
    for s in steps:
        if isinstance(s, Launch):
            out += [Launch(name) if isinstance(name, str) else name
                    for name in expand[s.kernel]]
        elif isinstance(s, Loop):
            out.append(replace(s, body=_expanded(s.body, expand)))
        elif isinstance(s, While):
            out.append(replace(s, cond=_expanded(s.cond, expand),
                               body=_expanded(s.body, expand)))
        elif isinstance(s, If):
            out.append(replace(s, then=_expanded(s.then, expand),
                               else_=_expanded(s.else_, expand)))
        else:
            out.append(s)
    return out
