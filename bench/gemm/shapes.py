"""GEMM tiles of any operand layout as MLIR text, with the reference the GPU script computes.

:func:`gemm_tile` writes ``func.func @f`` holding one configured ``quartet.tile``: an optional
accumulator fill, a matmul-like ``linalg.generic`` (f32 accumulation of f16/bf16/f32 products)
whose operands are laid out as their letters say, and an epilogue (a cast, with a bias row and
a ReLU when asked), with the schedule Roller's config would write. The reference is a small
JSON-ready dict that ``tma.py run`` (no MLIR there) evaluates with PyTorch.

Layout letters: A is ``"mk"`` (row-major) or ``"km"`` (stored transposed), B ``"kn"`` or
``"nk"``; with ``batch > 1`` an operand whose letters start with ``b`` (``"bmk"``) has a batch
dimension, one without is shared by every batch (a broadcast weight).
"""

from __future__ import annotations

PAR, RED = '"parallel"', '"reduction"'


def _tensor(shape, dt) -> str:
    return f"tensor<{'x'.join(map(str, shape))}x{dt}>"


def gemm_tile(m: int, n: int, k: int, *, batch: int = 1, a: str = "mk", b: str = "kn",
              dt: str = "f16", out: str | None = None, bias: bool = False, relu: bool = False,
              init: bool = False, bt=(128, 256, 64), threads: int = 256,
              stages: int | None = None) -> tuple[str, dict]:
    """(MLIR text, reference) of ``out = epilogue(A @ B)``.

    ``out``: the result type (default: the input type; ``f32`` keeps the accumulator).
    ``init``: the accumulator starts from an input tensor C (f32) instead of zero."""
    out = out or dt
    batched = batch > 1
    if not batched and (a.startswith("b") or b.startswith("b")):
        raise ValueError("batch letters need batch > 1")
    sizes = {"b": batch, "m": m, "n": n, "k": k}
    loops = (["b"] if batched else []) + ["m", "n", "k"]
    dim = {c: f"d{i}" for i, c in enumerate(loops)}
    c_letters = ("b" if batched else "") + "mn"

    def amap(letters):
        return (f"affine_map<({', '.join(dim[c] for c in loops)}) -> "
                f"({', '.join(dim[c] for c in letters)})>")

    def ttype(letters, t):
        return _tensor([sizes[c] for c in letters], t)

    a_t, b_t, acc_t, res_t = ttype(a, dt), ttype(b, dt), ttype(c_letters, "f32"), \
        ttype(c_letters, out)
    args = [f"%a: {a_t}", f"%b: {b_t}"]
    body = []
    if init:
        args.append(f"%c: {acc_t}")
        start = "%c"
    else:
        body += ["%zero = arith.constant 0.0 : f32", f"%acc0 = tensor.empty() : {acc_t}",
                 f"%fill = linalg.fill ins(%zero : f32) outs(%acc0 : {acc_t}) -> {acc_t}"]
        start = "%fill"
    if dt == "f32":
        prods = "  %p = arith.mulf %x, %y : f32\n"
    else:
        prods = (f"  %xe = arith.extf %x : {dt} to f32\n  %ye = arith.extf %y : {dt} to f32\n"
                 "  %p = arith.mulf %xe, %ye : f32\n")
    iters = ", ".join([PAR] * (len(loops) - 1) + [RED])
    body.append(
        f"%mm = linalg.generic {{indexing_maps = [{amap(a)}, {amap(b)}, {amap(c_letters)}], "
        f"iterator_types = [{iters}]}} ins(%a, %b : {a_t}, {b_t}) outs({start} : {acc_t}) {{\n"
        f"  ^bb0(%x: {dt}, %y: {dt}, %s: f32):\n{prods}"
        f"  %q = arith.addf %s, %p : f32\n  linalg.yield %q : f32\n}} -> {acc_t}")
    last = "%mm"
    rank = len(c_letters)
    ident = "(" + ", ".join(f"d{i}" for i in range(rank)) + ")"
    if out != "f32" or bias or relu:
        ins, types, maps = ["%mm"], [acc_t], [f"affine_map<{ident} -> {ident}>"]
        bargs, lines, val = ["%v: f32"], [], "%v"
        if bias:
            args.append(f"%bias: tensor<{n}xf32>")
            ins.append("%bias")
            types.append(f"tensor<{n}xf32>")
            maps.append(f"affine_map<{ident} -> (d{rank - 1})>")
            bargs.append("%bi: f32")
            lines.append(f"%sb = arith.addf {val}, %bi : f32")
            val = "%sb"
        if relu:
            lines += ["%z = arith.constant 0.0 : f32", f"%r = arith.maximumf {val}, %z : f32"]
            val = "%r"
        if out != "f32":
            lines.append(f"%t = arith.truncf {val} : f32 to {out}")
            val = "%t"
        maps.append(f"affine_map<{ident} -> {ident}>")
        pars = ", ".join([PAR] * rank)
        lines_text = "".join(f"  {x}\n" for x in lines)
        body += [f"%res0 = tensor.empty() : {res_t}",
                 f"%ep = linalg.generic {{indexing_maps = [{', '.join(maps)}], "
                 f"iterator_types = [{pars}]}} ins({', '.join(ins)} : {', '.join(types)}) "
                 f"outs(%res0 : {res_t}) {{\n  ^bb0({', '.join(bargs)}, %o: {out}):\n"
                 f"{lines_text}  linalg.yield {val} : {out}\n}} -> {res_t}"]
        last = "%ep"
    tile = ([1] if batched else []) + list(bt)
    thread = ([1] if batched else []) + [64, bt[1], bt[2]]
    extra = f", stages = {stages} : i64" if stages else ""
    attrs = (f"{{block_tile = array<i64: {', '.join(map(str, tile))}>, thread_tile = "
             f"array<i64: {', '.join(map(str, thread))}>, smem_padding = array<i64: 0, 0>, "
             f"tensor_core = {'true' if dt != 'f32' else 'false'}, threads = {threads} : i64"
             f"{extra}}}")
    body_text = "".join(f"    {x}\n" for x in body)
    text = (f"func.func @f({', '.join(args)}) -> {res_t} {{\n"
            f"  %0 = \"quartet.tile\"() ({{\n{body_text}    gpu.yield {last} : {res_t}\n"
            f"  }}) {attrs} : () -> {res_t}\n  return %0 : {res_t}\n}}\n")
    ref = {"kind": "gemm", "m": m, "n": n, "k": k, "batch": batch, "a": a, "b": b,
           "dtype": dt, "out": out, "bias": bias, "relu": relu, "init": init,
           "flops": 2 * batch * m * n * k}
    return text, ref
