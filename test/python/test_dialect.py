"""The Python API of the Quartet dialect: builders, accessors, parsing back, verification."""

import pytest
from mlir import ir
from mlir.dialects import arith, func, linalg, tensor

import quartet.dialects as qd
from quartet.dialects import TileOp, UVirtualOp, VTaskOp
from quartet.errors import QuartetError


def _matmul_func(ctx):
    f16, f32 = ir.F16Type.get(), ir.F32Type.get()
    a_t = ir.RankedTensorType.get([64, 32], f16)
    b_t = ir.RankedTensorType.get([32, 128], f16)
    c_t = ir.RankedTensorType.get([64, 128], f32)
    module = ir.Module.create()
    with ir.InsertionPoint(module.body):
        fn = func.FuncOp("mm", ([a_t, b_t, c_t], [c_t]))
        entry = fn.add_entry_block()
        with ir.InsertionPoint(entry):
            tile = TileOp([c_t])
            with ir.InsertionPoint(tile.entry):
                mm = linalg.matmul(entry.arguments[0], entry.arguments[1],
                                   outs=[entry.arguments[2]])
                qd.yield_([mm])
            func.ReturnOp([tile.results[0]])
    return module, tile


def test_build_tile_and_read_schedule():
    ctx = qd.context()
    with ctx, ir.Location.unknown():
        module, tile = _matmul_func(ctx)
        i64 = ir.IntegerType.get_signless(64)
        tile.operation.attributes["block_tile"] = ir.DenseI64ArrayAttr.get([64, 128, 32])
        tile.operation.attributes["thread_tile"] = ir.DenseI64ArrayAttr.get([32, 64, 32])
        tile.operation.attributes["smem_padding"] = ir.DenseI64ArrayAttr.get([8, 8])
        tile.operation.attributes["tensor_core"] = ir.BoolAttr.get(True)
        tile.operation.attributes["threads"] = ir.IntegerAttr.get(i64, 128)
        tile.operation.attributes["target"] = ir.StringAttr.get("sm_90")
        qd.verify(module)
        assert module.operation.verify()
        assert tile.block_tile == [64, 128, 32]
        assert tile.thread_tile == [32, 64, 32]
        assert tile.smem_padding == [8, 8]
        assert tile.tensor_core is True
        assert tile.threads == 128
        assert tile.target == "sm_90"
        assert tile.root.operation.name == "linalg.matmul"
        assert len(tile.inputs) == 3            # a, b and the init, captured from the func
        assert [str(v.type) for v in tile.outputs] == ["tensor<64x128xf32>"]

        # Printed, parsed back: the class comes back too.
        again = ir.Module.parse(str(module))
        parsed = again.body.operations[0].regions[0].blocks[0].operations[0]
        assert isinstance(parsed, TileOp)
        assert parsed.block_tile == [64, 128, 32]


def test_unconfigured_tile_has_no_schedule():
    ctx = qd.context()
    with ctx, ir.Location.unknown():
        _, tile = _matmul_func(ctx)
        assert tile.block_tile is None and tile.threads is None and tile.target is None
        assert tile.tensor_core is False


def test_verifier_rejects_wrong_loop_count():
    ctx = qd.context()
    with ctx, ir.Location.unknown():
        module, tile = _matmul_func(ctx)
        tile.operation.attributes["block_tile"] = ir.DenseI64ArrayAttr.get([64, 128])
        with pytest.raises(QuartetError, match="'block_tile' has 2 entries, but the root op "
                                               "'linalg.matmul' has 3 loops"):
            qd.verify(module)


def test_uvirtual_and_vtask_builders():
    ctx = qd.context()
    with ctx, ir.Location.unknown():
        t = ir.RankedTensorType.get([32], ir.F32Type.get())
        module = ir.Module.create()
        with ir.InsertionPoint(module.body):
            fn = func.FuncOp("f", ([t], [t]))
            entry = fn.add_entry_block()
            with ir.InsertionPoint(entry):
                uv = UVirtualOp([t], num_veus=8)
                with ir.InsertionPoint(uv.entry):
                    vt = VTaskOp([t], veu_begin=2, veu_count=4, step=1)
                    with ir.InsertionPoint(vt.entry):
                        tile = TileOp([t])
                        with ir.InsertionPoint(tile.entry):
                            init = tensor.EmptyOp([32], ir.F32Type.get())
                            e = linalg.exp(entry.arguments[0], outs=[init])
                            qd.yield_([e])
                        qd.yield_([tile.results[0]])
                    qd.yield_([vt.results[0]])
                func.ReturnOp([uv.results[0]])
        qd.verify(module)
        assert module.operation.verify()
        assert uv.num_veus == 8
        assert (vt.veu_begin, vt.veu_count, vt.step) == (2, 4, 1)
        assert len(vt.inputs) == 1 and vt.inputs[0] == entry.arguments[0]

        vt.operation.attributes["veu_begin"] = ir.IntegerAttr.get(
            ir.IntegerType.get_signless(64), 6)
        with pytest.raises(QuartetError, match=r"vEU range \[6, 10\) lies outside the 8 vEUs"):
            qd.verify(module)


def test_loading_twice_into_one_context_is_safe():
    ctx = qd.context()
    qd.load(ctx)   # a second load would abort the process without the guard
    with ctx:
        ir.Module.parse('func.func @f() { return }')


def test_constant_operand_captured():
    ctx = qd.context()
    with ctx, ir.Location.unknown():
        m = ir.Module.parse("""
        func.func @f(%o: tensor<7xf32>) -> tensor<7xf32> {
          %v = arith.constant 1.0 : f32
          %0 = "quartet.tile"() ({
            %1 = linalg.fill ins(%v : f32) outs(%o : tensor<7xf32>) -> tensor<7xf32>
            gpu.yield %1 : tensor<7xf32>
          }) : () -> tensor<7xf32>
          return %0 : tensor<7xf32>
        }""")
        tile = m.body.operations[0].regions[0].blocks[0].operations[1]
        assert [str(v.type) for v in tile.inputs] == ["f32", "tensor<7xf32>"]
