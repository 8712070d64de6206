"""In-place ops of a dynamo graph rewritten to their functional forms (issue 16, item 2).

``torch.compile`` hands the backend torch-level calls as the user wrote them:
``F.relu(x, inplace=True)`` (``nn.ReLU(inplace=True)``), ``operator.iadd`` (``out += identity``),
``operator.iand`` (``&=``), ``Tensor.mul_``, ``torch.relu_``. Quartet's programs are functional
(a program never writes its inputs), so each such node would split the graph and run eagerly.
AOTAutograd solves this by tracing the whole graph again through functionalization; here the
same result is had for the common case by a local rewrite of the FX graph, which keeps the
torch-level node names the backend's support checks and warnings use:

* the tensors a graph holds are grouped by storage (the fake tensors dynamo recorded share a
  storage exactly when they alias: an in-place op returns its input, a view shares its base);
* a group is rewritten when it is a value made inside the graph (not a graph input, whose
  mutation the caller must see, nor an attribute) followed only by in-place ops on it: no view
  of it exists, so no other name can observe the mutation;
* then each in-place node becomes its functional twin (``iadd`` -> ``add``, ``mul_`` -> ``mul``,
  ``inplace=True`` -> ``False``; cast back to the tensor's own type where the functional op
  would promote, as in-place ops never change it) and every later use of any member of the
  group reads the newest value.

What is left (a mutated graph input or view, an op with no functional twin such as ``copy_``
or ``fill_``) stays in place, and the backend runs it eagerly. ``torch.export`` (the
``quartet.compile`` path) functionalises by itself; it refuses mutated inputs as this does.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef

#: Python's augmented assignments and their functional twins
AUGMENTED = {
    operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
    operator.itruediv: operator.truediv, operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod, operator.ipow: operator.pow, operator.imatmul: operator.matmul,
    operator.iand: operator.and_, operator.ior: operator.or_, operator.ixor: operator.xor,
    operator.ilshift: operator.lshift, operator.irshift: operator.rshift,
}


def _value(node: torch.fx.Node):
    return node.meta.get("example_value", node.meta.get("val"))


def functional_twin(node: torch.fx.Node):
    """``(op, target, kwargs)`` computing ``node`` out of place, or None when it is not an
    in-place op (or has no twin)."""
    kwargs = dict(node.kwargs)
    if node.op == "call_function":
        if node.target in AUGMENTED:
            return "call_function", AUGMENTED[node.target], kwargs
        if kwargs.get("inplace") is True:
            kwargs["inplace"] = False
            return "call_function", node.target, kwargs
        name = getattr(node.target, "__name__", "")
        if name.endswith("_") and not name.endswith("__"):
            for owner in (torch, F):
                twin = getattr(owner, name[:-1], None)
                if callable(twin):
                    return "call_function", twin, kwargs
        return None
    if node.op == "call_method" and isinstance(node.target, str) \
            and node.target.endswith("_") and not node.target.endswith("__") \
            and hasattr(torch.Tensor, node.target[:-1]):
        return "call_method", node.target[:-1], kwargs
    return None


def _groups(graph: torch.fx.Graph) -> dict:
    """storage -> the nodes whose tensor lives in it, in graph order."""
    groups: dict = {}
    for node in graph.nodes:
        v = _value(node)
        if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter):
            try:
                ref = StorageWeakRef(v.untyped_storage())
            except (RuntimeError, NotImplementedError):   # no storage (e.g. sparse)
                continue
            groups.setdefault(ref, []).append(node)
    return groups


def _rewritable(members: list[torch.fx.Node]) -> bool:
    """A value made in the graph, then only in-place ops on it (no view, not an input)."""
    origin, *rest = members
    if origin.op in ("placeholder", "get_attr") or functional_twin(origin) is not None:
        return False
    return bool(rest) and all(functional_twin(n) is not None and n.args and n.args[0] in members
                              for n in rest)


def functionalize_in_place(gm: torch.fx.GraphModule) -> int:
    """Rewrite the in-place ops of ``gm`` that no one else can observe; return how many."""
    graph = gm.graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    rewritten = 0
    for members in _groups(graph).values():
        if not _rewritable(members):
            continue
        for k in range(1, len(members)):
            members[k] = _replace(graph, members[k], members[k - 1], members, order)
            rewritten += 1
    if rewritten:
        graph.lint()
        gm.recompile()
    return rewritten


def _replace(graph, node, current, members, order) -> torch.fx.Node:
    """Put ``node``'s functional twin in its place, reading ``current`` (the newest value), and
    make every later reader of the group read it."""
    op, target, kwargs = functional_twin(node)
    args = (current,) + tuple(node.args[1:])
    self_type = _value(node.args[0]).dtype
    with graph.inserting_before(node):
        new = graph.create_node(op, target, args, kwargs)
        new.meta = dict(node.meta)
        if any(isinstance(a, torch.fx.Node) and isinstance(_value(a), torch.Tensor)
               and _value(a).dtype != self_type for a in node.args[1:]):
            new = graph.call_method("to", (new, self_type))    # in place never promotes
            new.meta = dict(node.meta)
    order[new] = order[node]
    for m in members:
        for user in list(m.users):
            if user is not node and order.get(user, -1) > order[node]:
                user.replace_input_with(m, new)
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return new
