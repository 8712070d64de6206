"""Configured GEMM-shaped tiles as MLIR text, for the GEMM tests and device scripts.

Each builder returns a ``func.func @f`` holding one ``quartet.tile`` with a hand-written schedule
(what ``roller-config`` would write), and a reference description that the device script
(``run_gemm.py``, which imports no MLIR) uses to compute the expected result with PyTorch.
"""

from __future__ import annotations


def _attrs(bt, tt, threads, tc, pad=(0, 0), stages=None) -> str:
    extra = f", stages = {stages} : i64" if stages else ""
    return (f"{{block_tile = array<i64: {', '.join(map(str, bt))}>, "
            f"thread_tile = array<i64: {', '.join(map(str, tt))}>, "
            f"smem_padding = array<i64: {', '.join(map(str, pad))}>, "
            f"tensor_core = {'true' if tc else 'false'}, threads = {threads} : i64{extra}}}")


def _trunc_generic(src: str, src_t: str, res_t: str, rank: int, out: str, bias: str | None = None,
                   relu: bool = False) -> str:
    ident = "(" + ", ".join(f"d{i}" for i in range(rank)) + ")"
    par = ", ".join(['"parallel"'] * rank)
    maps = [f"affine_map<{ident} -> {ident}>"]
    ins = f"{src} : {src_t}"
    args = "%in: " + out
    body = ""
    val = "%in"
    if bias:
        bias_val, bias_t, bias_map = bias
        maps.append(f"affine_map<{ident} -> {bias_map}>")
        ins = f"{src}, {bias_val} : {src_t}, {bias_t}"
        args += f", %bi: {out}"
        body += f"      %s = arith.addf %in, %bi : {out}\n"
        val = "%s"
    if relu:
        body += f"      %z = arith.constant 0.0 : {out}\n      %r = arith.maximumf {val}, %z : {out}\n"
        val = "%r"
    maps.append(f"affine_map<{ident} -> {ident}>")
    return (f"    %2 = linalg.generic {{indexing_maps = [{', '.join(maps)}], iterator_types = [{par}]}}"
            f" ins({ins}) outs(%e : {res_t}) {{\n    ^bb0({args}, %o: f16):\n{body}"
            f"      %t = arith.truncf {val} : {out} to f16\n      linalg.yield %t : f16\n"
            f"    }} -> {res_t}\n")


def matmul(M, N, K, *, dt="f16", out="f32", bt=(128, 128, 64), tt=(64, 64, 64), threads=128,
           tc=True, transb=False, fused=False, bias=False, relu=False, pad=(0, 0), stages=None):
    """``C = A @ B`` (B given as [N, K] when ``transb``). ``fused``: the tile holds fill +
    matmul + an f16 cast (what Welder fuses), so the accumulator starts at zero and the
    result is f16; otherwise the init tensor C is an input and the result has type ``out``."""
    bshape = f"{N}x{K}" if transb else f"{K}x{N}"
    maps = ""
    if transb:
        maps = ("indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d2)>, "
                "affine_map<(d0, d1, d2) -> (d1, d2)>, affine_map<(d0, d1, d2) -> (d0, d1)>] ")
    ct = f"tensor<{M}x{N}x{out}>"
    res_t = f"tensor<{M}x{N}xf16>" if fused else ct
    body, init, args = "", "%c", [f"%a: tensor<{M}x{K}x{dt}>", f"%b: tensor<{bshape}x{dt}>"]
    if fused:
        body += (f"    %cst = arith.constant 0.0 : {out}\n"
                 f"    %f = linalg.fill ins(%cst : {out}) outs(%c : {ct}) -> {ct}\n")
        init = "%f"
    body += (f"    %1 = linalg.matmul {maps}ins(%a, %b : tensor<{M}x{K}x{dt}>, tensor<{bshape}x{dt}>)"
             f" outs({init} : {ct}) -> {ct}\n")
    last = "%1"
    args.append(f"%c: {ct}")
    if fused:
        b = None
        if bias:
            args.append(f"%bias: tensor<{N}x{out}>")
            b = ("%bias", f"tensor<{N}x{out}>", "(d1)")
        args.append(f"%e: {res_t}")
        body += _trunc_generic("%1", ct, res_t, 2, out, b, relu)
        last = "%2"
    src = (f"func.func @f({', '.join(args)}) -> {res_t} {{\n  %0 = \"quartet.tile\"() ({{\n{body}"
           f"    gpu.yield {last} : {res_t}\n  }}) {_attrs(bt, tt, threads, tc, pad, stages)}"
           f" : () -> {res_t}\n  return %0 : {res_t}\n}}\n")
    # Function arguments (the kernel takes the tile's inputs in order of first use).
    roles = ["a", "b", "c"] + (["bias"] if fused and bias else []) + (["e"] if fused else [])
    shapes = [[M, K], [N, K] if transb else [K, N], [M, N]] + ([[N]] if fused and bias else []) \
        + ([[M, N]] if fused else [])
    dtypes = [dt, dt, out] + ([out] if fused and bias else []) + (["f16"] if fused else [])
    ref = {"kind": "matmul", "transb": transb, "init": "zero" if fused else "tensor",
           "bias": bool(fused and bias), "relu": relu, "M": M, "N": N, "K": K}
    return src, {"roles": roles, "shapes": shapes, "dtypes": dtypes,
                 "out": {"shape": [M, N], "dtype": "f16" if fused else out}, "ref": ref}


def batch_matmul(B, M, N, K, *, dt="f16", out="f32", bt=(1, 128, 128, 64), tt=(1, 64, 64, 64),
                 threads=128, tc=True, stages=None):
    ct = f"tensor<{B}x{M}x{N}x{out}>"
    src = (f"func.func @f(%a: tensor<{B}x{M}x{K}x{dt}>, %b: tensor<{B}x{K}x{N}x{dt}>, %c: {ct})"
           f" -> {ct} {{\n  %0 = \"quartet.tile\"() ({{\n    %1 = linalg.batch_matmul ins(%a, %b :"
           f" tensor<{B}x{M}x{K}x{dt}>, tensor<{B}x{K}x{N}x{dt}>) outs(%c : {ct}) -> {ct}\n"
           f"    gpu.yield %1 : {ct}\n  }}) {_attrs(bt, tt, threads, tc, stages=stages)} : () -> {ct}\n"
           f"  return %0 : {ct}\n}}\n")
    return src, {"roles": ["a", "b", "c"], "shapes": [[B, M, K], [B, K, N], [B, M, N]],
                 "dtypes": [dt, dt, out], "out": {"shape": [B, M, N], "dtype": out},
                 "ref": {"kind": "bmm", "init": "tensor"}}


def conv2d(N, C, H, W, F, KH, KW, *, stride=1, dt="f16", out="f32", bt=None, tt=None,
           threads=128, tc=True, fused=False, stages=None):
    """A valid (already padded) NCHW/FCHW convolution; loops (n, f, oh, ow, c, kh, kw)."""
    OH, OW = (H - KH) // stride + 1, (W - KW) // stride + 1
    ot = f"tensor<{N}x{F}x{OH}x{OW}x{out}>"
    res_t = f"tensor<{N}x{F}x{OH}x{OW}xf16>" if fused else ot
    xt, wt = f"tensor<{N}x{C}x{H}x{W}x{dt}>", f"tensor<{F}x{C}x{KH}x{KW}x{dt}>"
    body, init = "", "%c"
    args = [f"%x: {xt}", f"%w: {wt}", f"%c: {ot}"]
    if fused:
        body += (f"    %cst = arith.constant 0.0 : {out}\n"
                 f"    %f = linalg.fill ins(%cst : {out}) outs(%c : {ot}) -> {ot}\n")
        init = "%f"
    body += (f"    %1 = linalg.conv_2d_nchw_fchw {{dilations = dense<1> : vector<2xi64>, strides ="
             f" dense<{stride}> : vector<2xi64>}} ins(%x, %w : {xt}, {wt}) outs({init} : {ot})"
             f" -> {ot}\n")
    last = "%1"
    if fused:
        args.append(f"%e: {res_t}")
        body += _trunc_generic("%1", ot, res_t, 4, out)
        last = "%2"
    src = (f"func.func @f({', '.join(args)}) -> {res_t} {{\n  %0 = \"quartet.tile\"() ({{\n{body}"
           f"    gpu.yield {last} : {res_t}\n  }}) {_attrs(bt, tt, threads, tc, stages=stages)}"
           f" : () -> {res_t}\n  return %0 : {res_t}\n}}\n")
    return src, {"roles": ["x", "w", "c"] + (["e"] if fused else []),
                 "shapes": [[N, C, H, W], [F, C, KH, KW], [N, F, OH, OW]]
                 + ([[N, F, OH, OW]] if fused else []),
                 "dtypes": [dt, dt, out] + (["f16"] if fused else []),
                 "out": {"shape": [N, F, OH, OW], "dtype": "f16" if fused else out},
                 "ref": {"kind": "conv", "stride": stride,
                         "init": "zero" if fused else "tensor"}}


def tile_of(module):
    """The first quartet.tile of a parsed module."""
    from mlir import ir

    found = []

    def visit(op):
        if op.name == "quartet.tile" and not found:
            found.append(op.opview)
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return found[0]


def kernel_args(tile, info: dict) -> list[dict]:
    """Per kernel argument (tile inputs in order of first use, then the result): role, shape,
    dtype, taken from the function arguments of ``info``."""
    block = tile.operation.block
    fn_args = list(block.arguments)
    out = []
    for v in tile.inputs:
        i = fn_args.index(v)
        out.append({"role": info["roles"][i], "shape": info["shapes"][i],
                    "dtype": info["dtypes"][i]})
    out.append({"role": "out", **info["out"]})
    return out
