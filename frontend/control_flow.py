"""Higher-order control flow for torch-mlir's fx importer: ``torch.cond`` and ``while_loop``.

Grinder (Cocktailer, OSDI'23) needs a model's loops and branches to reach the IR as structured
control flow (``scf.while``, ``scf.if``) around tensor computations, not unrolled by tracing.
``torch.export`` keeps them as higher-order operators whose bodies are child graph modules;
torch-mlir's importer turns each child graph into a private ``func.func`` before the parent graph
and dispatches a higher-order node to ``GraphNodeImporter._import_hop_<name>``. This module adds
what that dispatch lacks, by subclassing (torch-mlir's files are not touched):

- ``_import_hop_cond``: torch-mlir 20261001 has no handler. We emit ``torch.prim.If`` whose two
  regions call the branch functions and yield their results; torch-mlir's TorchToSCF lowers it to
  ``scf.if`` and its inliner puts the branch bodies inside.
- ``_import_hop_while_loop``: torch-mlir's handler passes the loop-invariant ``additional_inputs``
  (the closure values torch.export lifts, e.g. the weights an LSTM cell reads in its body) as
  loop-carried operands of ``torch.prim.Loop`` and calls the child functions without them, which
  the verifier rejects. We carry only ``carried_inputs`` and pass ``additional_inputs`` to every
  call of the condition and body functions from above the loop. ``torch.prim.Loop`` with a
  data-dependent condition lowers to ``scf.while``; its entry test is kept from constant
  folding, which would make torch-mlir lower it to a counted loop that never stops.

Assumes torch 2.13's HOP argument layout: ``cond(pred, true_gm, false_gm, operands)`` and
``while_loop(cond_gm, body_gm, carried_inputs, additional_inputs)``, operands all tensors.
"""

from __future__ import annotations

import torch
from torch_mlir.extras.fx_importer import GraphNodeImporter
from torch_mlir.ir import (
    Block,
    FlatSymbolRefAttr,
    InsertionPoint,
    Location,
    Operation,
    Value,
)

_INT64_MAX = torch.iinfo(torch.int64).max


class ControlFlowGraphNodeImporter(GraphNodeImporter):
    """torch-mlir's GraphNodeImporter with ``torch.cond`` and a closure-aware ``while_loop``."""

    # GraphNodeImporter uses __slots__; keep the subclass slot-only as well.
    __slots__ = []

    # -- helpers ----------------------------------------------------------------------------

    def _child_function_name(self, graph_node: torch.fx.Node) -> str:
        """Symbol of the private func.func the importer made from a ``get_attr`` child graph."""
        if graph_node.op != "get_attr":
            raise NotImplementedError(
                f"higher-order operand {graph_node} is not a get_attr of a child graph"
            )
        child = getattr(graph_node.graph.owning_module, graph_node.target)
        return self.fx_importer._graph_module_to_func_name[id(child)]

    def _import_operands(self, loc: Location, operands) -> list[Value]:
        values: list[Value] = []
        for operand in operands:
            if isinstance(operand, (tuple, list)):
                values.extend(self._import_operands(loc, operand))
            else:
                values.append(self._import_argument(loc, operand))
        return values

    def _result_types(self, node: torch.fx.Node):
        vals = node.meta.get("val")
        if not isinstance(vals, (list, tuple)):
            vals = (vals,)
        return [self._cc.value_info_to_type(v) for v in vals]

    def _to_torch_bool(self, loc: Location, value: Value) -> Value:
        """A ``!torch.vtensor<[],i1>`` predicate becomes the ``!torch.bool`` control flow takes."""
        if str(value.type).startswith("!torch.vtensor"):
            return Operation.create(
                "torch.aten.Bool.Tensor",
                results=[self._cc.torch_bool_type],
                operands=[value],
                loc=loc,
            ).result
        return value

    def _initial_condition(self, loc: Location, cond: Value) -> Value:
        """The loop's entry condition, kept from folding to a ``torch.constant.bool``.

        torch-mlir's TorchToSCF calls a ``torch.prim.Loop`` whose initial condition is the
        constant ``true`` "for-like" and lowers it to ``scf.for 0 .. max_trip`` that ignores
        the body's condition. When a while_loop's first test folds (constant initial carries,
        e.g. ``t = 0; while t < n``), the loop would never stop. ``logical_or(c, c)`` is not
        folded by torch-mlir 20261001, so the loop stays while-like; the importer also checks
        the output for a counted loop up to ``max_trip`` (see ``importer._check_loops``).
        """
        opaque = Operation.create(
            "torch.aten.logical_or", results=[cond.type], operands=[cond, cond], loc=loc
        ).result
        return self._to_torch_bool(loc, opaque)

    def _call(self, loc: Location, callee: str, operands, result_types) -> list[Value]:
        op = Operation.create(
            "func.call",
            attributes={"callee": FlatSymbolRefAttr.get(callee, context=self._c)},
            results=list(result_types),
            operands=list(operands),
            loc=loc,
        )
        return list(op.results)

    def _bind_results(self, node: torch.fx.Node, results) -> None:
        # HOP nodes return tuples read through getitem: always treat them as multi-result.
        self._multi_result_nodes.add(node)
        for i, value in enumerate(results):
            self.bind_node_value(node, value, i)

    # -- torch.cond ---------------------------------------------------------------------------

    def _import_hop_cond(self, loc: Location, node: torch.fx.Node, hop) -> None:
        """``cond(pred, true_gm, false_gm, operands)`` -> ``torch.prim.If`` calling each branch."""
        pred, true_node, false_node, operands = node.args
        true_fn = self._child_function_name(true_node)
        false_fn = self._child_function_name(false_node)
        result_types = self._result_types(node)
        with loc, InsertionPoint(self._b):
            pred_value = self._to_torch_bool(loc, self._import_argument(loc, pred))
            operand_values = self._import_operands(loc, operands)
            if_op = Operation.create(
                "torch.prim.If",
                results=result_types,
                operands=[pred_value],
                regions=2,
                loc=loc,
            )
            for region, callee in zip(if_op.regions, (true_fn, false_fn)):
                block = Block.create_at_start(region, [])
                with InsertionPoint(block):
                    branch_results = self._call(loc, callee, operand_values, result_types)
                    Operation.create(
                        "torch.prim.If.yield", results=[], operands=branch_results, loc=loc
                    )
        self._bind_results(node, if_op.results)

    # -- while_loop ---------------------------------------------------------------------------

    def _import_hop_while_loop(self, loc: Location, node: torch.fx.Node, hop) -> None:
        """``while_loop(cond_gm, body_gm, carried, additional)`` -> ``torch.prim.Loop``.

        Only ``carried`` values are loop-carried; ``additional`` (loop-invariant closure values)
        are passed from above the loop to every call of the condition and body functions.
        """
        cond_node, body_node, carried, *rest = node.args
        additional = rest[0] if rest else ()
        cond_fn = self._child_function_name(cond_node)
        body_fn = self._child_function_name(body_node)
        result_types = self._result_types(node)
        cond_type = self._cc.get_vtensor_type(torch.Size([]), torch.bool)
        with loc, InsertionPoint(self._b):
            carried_values = self._import_operands(loc, carried)
            invariant_values = self._import_operands(loc, additional)
            if len(carried_values) != len(result_types):
                raise NotImplementedError(
                    f"while_loop with {len(carried_values)} carried values but "
                    f"{len(result_types)} results"
                )
            (first_cond,) = self._call(loc, cond_fn, carried_values + invariant_values, [cond_type])
            max_trip = Operation.create(
                "torch.constant.int",
                results=[self._cc.torch_int_type],
                attributes={"value": self._cc.integer_attr(_INT64_MAX, 64)},
                loc=loc,
            ).result
            loop = Operation.create(
                "torch.prim.Loop",
                results=result_types,
                operands=[max_trip, self._initial_condition(loc, first_cond)] + carried_values,
                regions=1,
                loc=loc,
            )
            block = Block.create_at_start(
                loop.regions[0], [self._cc.torch_int_type] + result_types
            )
            with InsertionPoint(block):
                next_values = self._call(
                    loc, body_fn, list(block.arguments[1:]) + invariant_values, result_types
                )
                (next_cond,) = self._call(
                    loc, cond_fn, next_values + invariant_values, [cond_type]
                )
                Operation.create(
                    "torch.prim.Loop.condition",
                    results=[],
                    operands=[self._to_torch_bool(loc, next_cond)] + next_values,
                    loc=loc,
                )
        self._bind_results(node, loop.results)
