"""The torch.compile backend: ``torch.compile(model, backend="quartet")``.

Dynamo hands the backend an FX graph of torch-level calls (parameters lifted to graph inputs)
and example inputs. The backend

1. decides per node whether Quartet supports it: the node's op is imported alone, as a
   one-node ``GraphModule`` on tensors of the node's shapes and dtypes, through
   :func:`quartet.frontend.importer.import_module` (torch-mlir to linalg on tensors). The answer
   is cached by op, input shapes and dtypes and non-tensor arguments, for the whole process.
   In-place ops on values made in the graph are first rewritten to their functional forms
   (:mod:`.functionalize`); in-place ops left (on graph inputs or views) and nodes on
   non-tensor values are never supported;
2. partitions the graph into the largest supported, acyclic subgraphs with
   ``torch.fx.passes.infra.partitioner.CapabilityBasedPartitioner``;
3. compiles each partition with :func:`quartet.compile` (target ``cpu`` for CPU tensors; for
   CUDA tensors ``options["target"]``, by default ``auto``: the tensors' GPU architecture) and
   calls the compiled program in its place; a partition that fails to compile runs eagerly;
4. leaves every other node to eager PyTorch, with ONE warning per graph that names the
   unsupported ops and where in the model they are (plus one naming partitions that failed to
   compile, when any did).

Options (``torch.compile(model, backend="quartet", options={...})``): ``target`` (the CUDA
target), ``pipeline`` (``roller`` or ``welder``), ``graph`` (replay CUDA graphs).

Training mode (issue 15, item 3): when autograd is on and an input requires grad (a model's
parameters do, outside ``torch.no_grad()``), the graph goes through AOTAutograd first, as
Inductor's does: the forward graph it derives (aten ops, functional, returning what backward
saves) is compiled as above, and the backward graph runs in eager PyTorch. So
``loss.backward()`` works and gradients are PyTorch's own. Weights are graph inputs
(dynamo lifts parameters), so every call sees the module's current weights. Static shapes
only (a graph with symbolic sizes runs eagerly, warned).

Registration: importing this module registers the backend with torch._dynamo; the package's
``torch_dynamo_backends`` entry point (pyproject.toml) lets torch find it without the import.
"""

from __future__ import annotations

import copy
import operator
import warnings
from dataclasses import dataclass

import torch
import torch.fx
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase
from torch.fx.passes.utils.fuser_utils import fuse_by_partitions

from quartet.errors import QuartetError
from quartet.frontend.functionalize import AUGMENTED, functionalize_in_place

BACKEND_NAME = "quartet"
DEFAULT_CUDA_TARGET = "auto"   # the CUDA tensors' own GPU (frontend/target.py)


class QuartetWarning(UserWarning):
    """What the backend leaves to eager PyTorch, and why."""


@dataclass(frozen=True)
class Options:
    target: str = DEFAULT_CUDA_TARGET   # the target of CUDA tensors; CPU tensors use "cpu"
    pipeline: str = "roller"
    graph: bool | None = None          # None: quartet.runtime.load's default
    cache: bool | None = None          # the compile cache (frontend/cache.py); False: bypass

    @classmethod
    def from_dict(cls, options: dict | None) -> "Options":
        options = dict(options or {})
        unknown = sorted(set(options) - {"target", "pipeline", "graph", "cache"})
        if unknown:
            raise QuartetError(f"unknown quartet backend option(s) {', '.join(unknown)} "
                               f"(known: target, pipeline, graph, cache)")
        return cls(**options)


# --------------------------------------------------------------------------------------------
# Which nodes Quartet supports
# --------------------------------------------------------------------------------------------

#: (op key) -> None when supported, else the reason; shared by every graph of the process
_SUPPORT_CACHE: dict[tuple, str | None] = {}

#: ops that only re-index or name values: a partition of nothing else is not worth compiling
_PLUMBING = {"_operator.getitem", "torch.reshape", "torch.flatten", "torch.permute",
             "torch.transpose", "torch.squeeze", "torch.unsqueeze",
             "view", "reshape", "permute", "transpose", "flatten", "squeeze", "unsqueeze",
             "contiguous", "t", "expand", "chunk", "split", "size"}
#: the same in the aten graphs of AOTAutograd (training mode): views, detach, copies
_PLUMBING |= {f"torch.ops.aten.{op}.default" for op in (
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "squeeze",
    "unsqueeze", "detach", "alias", "clone", "slice", "select", "split", "unbind")}
_PLUMBING |= {"torch.ops.aten.transpose.int", "torch.ops.aten.squeeze.dim",
              "torch.ops.aten.unsqueeze.default", "torch.ops.aten.slice.Tensor",
              "torch.ops.aten.select.int", "torch.ops.aten.split.Tensor",
              "torch.ops.aten.unbind.int", "torch.ops.aten.squeeze.dims"}


def _example(node: torch.fx.Node):
    """The fake (or real) value dynamo recorded for ``node``."""
    return node.meta.get("example_value", node.meta.get("val"))


def _static_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and all(isinstance(d, int) for d in value.shape)


def _outputs_ok(value) -> bool:
    if isinstance(value, (tuple, list)):
        return len(value) > 0 and all(_static_tensor(v) for v in value)
    return _static_tensor(value)


def op_name(node: torch.fx.Node, submodules=None) -> str:
    """A readable name of a node's op: ``torch.tanh``, ``Tensor.cumsum``, ``nn.Linear``."""
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_module":
        mod = (submodules or {}).get(node.target)
        return f"nn.{type(mod).__name__}" if mod is not None else str(node.target)
    from torch.fx.node import _get_qualified_name

    try:
        name = _get_qualified_name(node.target)
    except Exception:
        name = str(node.target)
    name = name.replace("torch._C._special.special_", "torch.special.")
    name = name.replace("torch._C._nn.", "torch.nn.functional.")
    name = name.replace("torch._C._fft.fft_", "torch.fft.")
    return name.replace("_operator.", "operator.")


def _in_place(node: torch.fx.Node) -> bool:
    if node.kwargs.get("inplace") is True or "out" in node.kwargs:
        return True
    if node.op == "call_function" and node.target in AUGMENTED:       # +=, &=, ...
        return True
    if node.op == "call_function" and node.target in vars(operator).values():
        return False                                                   # operator.and_
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return isinstance(name, str) and name.endswith("_") and not name.endswith("__")


def _subgraph(gm: torch.fx.GraphModule, node: torch.fx.Node):
    """The GraphModule a ``get_attr`` node names (a higher-order op's subgraph), else None."""
    if node.op != "get_attr":
        return None
    try:
        value = gm.get_submodule(node.target)
    except AttributeError:
        return None
    return value if isinstance(value, torch.fx.GraphModule) else None


def _key(node: torch.fx.Node, submodules, gm: torch.fx.GraphModule) -> tuple:
    """What decides support: op, input shapes and dtypes, and the non-tensor arguments
    (a subgraph by its code)."""
    def arg(a):
        if isinstance(a, torch.fx.Node) and _subgraph(gm, a) is not None:
            return ("G", _subgraph(gm, a).code)
        if isinstance(a, torch.fx.Node):
            v = _example(a)
            if isinstance(v, torch.Tensor):
                return ("T", tuple(v.shape), str(v.dtype))
            return ("N", a.name)
        if isinstance(a, (tuple, list)):
            return tuple(arg(x) for x in a)
        if isinstance(a, dict):
            return tuple((k, arg(v)) for k, v in sorted(a.items()))
        return repr(a)

    target = repr(submodules.get(node.target)) if node.op == "call_module" else op_name(node)
    return (node.op, target, arg(node.args), arg(node.kwargs))


def _single_node_module(gm: torch.fx.GraphModule, node: torch.fx.Node):
    """``node`` alone as a GraphModule over placeholders, with CPU example tensors."""
    graph = torch.fx.Graph()
    env, inputs = {}, []
    for inp in node.all_input_nodes:
        if _subgraph(gm, inp) is not None:
            env[inp] = graph.get_attr(inp.target)
            continue
        env[inp] = graph.placeholder(inp.name)
        inputs.append(example_tensor(_example(inp)))
    graph.output(graph.node_copy(node, lambda n: env[n]))
    return torch.fx.GraphModule(gm, graph), tuple(inputs)


def example_tensor(value, device="cpu") -> torch.Tensor:
    """A real tensor like ``value`` (a FakeTensor): normal floats, zero integers and bools."""
    shape, dtype = tuple(value.shape), value.dtype
    if dtype.is_floating_point:
        return torch.randn(shape, dtype=torch.float32, device=device).to(dtype)
    return torch.zeros(shape, dtype=dtype, device=device)


class QuartetSupport(OperatorSupportBase):
    """Supported: a call whose op imports alone to linalg on tensors (cached)."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.reasons: dict[torch.fx.Node, str] = {}

    def is_node_supported(self, submodules, node: torch.fx.Node) -> bool:
        if node.op == "get_attr":
            # The branch or body of a higher-order op (cond, while_loop): it travels with it.
            return _subgraph(self.gm, node) is not None
        if node.op not in ("call_function", "call_method", "call_module"):
            return False
        reason = self._reason(submodules, node)
        if reason is not None:
            self.reasons[node] = reason
        return reason is None

    def _reason(self, submodules, node) -> str | None:
        if node.op == "call_function" and node.target is operator.getitem:
            # Plumbing of a multi-result op (chunk, split): supported with its producer.
            src = node.args[0]
            if isinstance(src, torch.fx.Node) and isinstance(_example(src), (tuple, list)):
                return self._reason(submodules, src)
        if not _outputs_ok(_example(node)):
            return "its result is not a tensor of static shape"
        if any(not _static_tensor(_example(n)) for n in node.all_input_nodes
               if _subgraph(self.gm, n) is None):
            return "an operand is not a tensor of static shape"
        if _in_place(node):
            return "in-place ops are not supported"
        key = _key(node, submodules, self.gm)
        if key not in _SUPPORT_CACHE:
            _SUPPORT_CACHE[key] = _try_import(self.gm, node)
        return _SUPPORT_CACHE[key]


def _try_import(gm, node) -> str | None:
    from quartet.frontend.importer import import_module

    try:
        module, inputs = _single_node_module(gm, node)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import_module(module, inputs)
    except QuartetError as e:
        return e.message
    except Exception as e:   # torch.export or torch-mlir refused it
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
    return None


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------


class CompiledPartition(torch.nn.Module):
    """A partition's compiled program, called where the partition's submodule was."""

    def __init__(self, compiled, name: str):
        super().__init__()
        self.compiled = compiled
        self.partition = name

    def forward(self, *args):
        out = self.compiled(*args)
        return out if isinstance(out, tuple) else (out,)


def _location(node: torch.fx.Node) -> str | None:
    from quartet.frontend.importer import node_location

    return node_location(node)


def _describe_unsupported(reasons: dict, submodules) -> str:
    """One line: each unsupported op once, with the model lines it is used at and why."""
    ops: dict[str, tuple[list[str], str]] = {}
    for node, reason in reasons.items():
        if node.op == "call_function" and node.target is operator.getitem:
            continue   # named through its producer
        where, _ = ops.setdefault(op_name(node, submodules), ([], reason))
        loc = _location(node)
        if loc and loc not in where:
            where.append(loc)
    items = [name + (f" at {', '.join(where)}" if where else "") + f" ({reason})"
             for name, (where, reason) in ops.items()]
    return f"quartet: {len(ops)} unsupported op(s) run eagerly: " + "; ".join(items)


def _worth_compiling(nodes, submodules) -> bool:
    """Some computation (not only views and subgraph references), reading at least one
    tensor from outside (a partition of constants, e.g. ``torch.zeros``, stays eager)."""
    compute = [n for n in nodes if n.op != "get_attr"
               and op_name(n, submodules).removeprefix("Tensor.") not in _PLUMBING]
    reads = any(i not in nodes and i.op != "get_attr" for n in nodes for i in n.all_input_nodes)
    return bool(compute) and reads


def _eager(gm, message: str):
    warnings.warn(message, QuartetWarning, stacklevel=2)
    return gm.forward


def quartet_backend(gm: torch.fx.GraphModule, example_inputs, options: dict | None = None,
                    **_ignored):
    """The dynamo backend: compile supported partitions with Quartet, the rest stays eager."""
    opts = Options.from_dict(options)
    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)]
    if len(tensors) != len(example_inputs) or not all(_static_tensor(t) for t in tensors):
        return _eager(gm, "quartet: the graph has symbolic sizes or non-tensor inputs; it runs "
                          "eagerly (use torch.compile(..., dynamic=False))")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _forward_through_aot_autograd(gm, example_inputs, opts)
    return _compile_graph(gm, tensors, opts)


def _forward_through_aot_autograd(gm, example_inputs, opts: Options):
    """Training mode: AOTAutograd splits the graph; Quartet compiles the forward, the
    backward runs in eager PyTorch."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def forward_compiler(fw: torch.fx.GraphModule, inputs):
        tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
        return make_boxed_func(_compile_graph(fw, tensors, opts))

    def backward_in_eager(bw: torch.fx.GraphModule, inputs):
        return make_boxed_func(bw.forward)

    return aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_in_eager)(
        gm, example_inputs)


def _compile_graph(gm: torch.fx.GraphModule, tensors, opts: Options):
    """Compile the supported partitions of ``gm`` (its inputs: ``tensors``), the rest eager."""
    devices = {t.device.type for t in tensors}
    if len(devices) > 1:
        return _eager(gm, f"quartet: the graph mixes devices ({', '.join(sorted(devices))}); "
                          f"it runs eagerly")
    if devices == {"cuda"}:
        if opts.target == "cpu":
            raise QuartetError("quartet backend: target 'cpu' was given for CUDA tensors")
        from quartet.frontend.target import resolve_target

        target = resolve_target(opts.target, tensors)
    else:
        target = "cpu"

    functionalize_in_place(gm)     # relu_, +=, &= on values made in the graph: one partition
    support = QuartetSupport(gm)
    partitioner = CapabilityBasedPartitioner(gm, support, allows_single_node_partition=True)
    submodules = dict(gm.named_modules())
    partitions = [p for p in partitioner.propose_partitions()
                  if _worth_compiling(p.nodes, submodules)]
    if support.reasons:
        warnings.warn(_describe_unsupported(support.reasons, submodules), QuartetWarning,
                      stacklevel=2)
    if not partitions:
        return gm.forward
    fused = fuse_by_partitions(gm, [dict(p.nodes) for p in partitions], prefix="quartet_",
                               always_return_tuple=True)
    failures = []
    for call in [n for n in fused.graph.nodes if n.op == "call_module"
                 and n.target.startswith("quartet_")]:
        sub = fused.get_submodule(call.target)
        try:
            compiled = _compile_partition(sub, call, target, opts)
        except Exception as e:
            text = str(e).strip().splitlines()
            failures.append(f"{call.target} ({', '.join(_node_ops(sub))}): "
                            f"{text[0] if text else type(e).__name__}")
            continue
        setattr(fused, call.target, CompiledPartition(compiled, call.target))
    if failures:
        warnings.warn(f"quartet: {len(failures)} partition(s) failed to compile and run "
                      f"eagerly: " + "; ".join(failures), QuartetWarning, stacklevel=2)
    fused.recompile()
    return fused


def _node_ops(sub: torch.fx.GraphModule) -> list[str]:
    mods = dict(sub.named_modules())
    names = []
    for n in sub.graph.nodes:
        if n.op.startswith("call_") and op_name(n, mods) not in names:
            names.append(op_name(n, mods))
    return names


def _compile_partition(sub: torch.fx.GraphModule, call: torch.fx.Node, target: str,
                       opts: Options):
    from quartet.frontend.compile import compile as quartet_compile

    inputs = tuple(example_tensor(_example(a)) for a in call.args)
    module = sub
    if any(t.device.type != "cpu" for t in (*sub.parameters(), *sub.buffers())):
        module = copy.deepcopy(sub).to("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quartet_compile(module, inputs, pipeline=opts.pipeline, target=target,
                               graph=opts.graph, cache=opts.cache)


def register() -> None:
    """Register ``"quartet"`` with torch._dynamo (idempotent).

    When torch has already discovered the entry point (``_BACKENDS`` holds it), it loads this
    module itself and registers the function; registering here too would be a duplicate.
    """
    from torch._dynamo.backends import registry

    if BACKEND_NAME not in registry._BACKENDS and BACKEND_NAME not in registry._COMPILER_FNS:
        registry.register_backend(quartet_backend, name=BACKEND_NAME)


register()
