"""Check and time the kernels that ``build_gemm.py`` wrote, on the GPU machine (no MLIR there).

    python3 bench/gemm/run_gemm.py [DIR] [--only SUBSTRING] [--reps N]

For each kernel in ``DIR/manifest.json``: random inputs (fresh per kernel), the output poisoned
with NaN, one launch through CuPy (``RawModule`` on the cubin; if the driver refuses it, the PTX
is assembled with the machine's own ``ptxas``), the result compared with PyTorch in float32
(TF32 off) as ||out - ref|| / ||ref||, then the kernel and its PyTorch peer timed with CUDA
events (median over ``reps`` timed batches of back-to-back launches after warm-up). Prints one
line per kernel and a summary table; writes ``results.json`` under ``$OUT`` when set.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
DT = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}


def load_kernel(d, k):
    import cupy

    try:
        mod = cupy.RawModule(path=os.path.join(d, k["name"] + ".cubin"))
        fn = mod.get_function(k["entry"])
        how = "cubin"
    except Exception as e:  # noqa: BLE001 - fall back to the machine's ptxas
        out = os.path.join("/tmp", k["name"] + ".cubin")
        subprocess.run(["ptxas", f"-arch={k['chip']}", "-O3",
                        os.path.join(d, k["name"] + ".ptx"), "-o", out], check=True)
        mod = cupy.RawModule(path=out)
        fn = mod.get_function(k["entry"])
        how = f"ptx ({type(e).__name__})"
    if k["smem"] > 48 * 1024:
        fn.max_dynamic_shared_size_bytes = k["smem"]
    return mod, fn, how


def make_args(k, gen):
    args = []
    for a in k["args"]:
        t = torch.randn(a["shape"], generator=gen, device="cuda", dtype=torch.float32)
        t = t.to(DT[a["dtype"]])
        if a["role"] == "out":
            t.fill_(float("nan"))
        args.append(t)
    return args


def reference(k, named):
    r = k["ref"]
    if r["kind"] == "matmul":
        a, b = named["a"].float(), named["b"].float()
        ref = a @ (b.t() if r["transb"] else b)
        if r["init"] == "tensor":
            ref = ref + named["c"].float()
        if r.get("bias"):
            ref = ref + named["bias"].float()
        if r.get("relu"):
            ref = torch.relu(ref)
        return ref
    if r["kind"] == "bmm":
        return torch.bmm(named["a"].float(), named["b"].float()) + named["c"].float()
    if r["kind"] == "conv":
        ref = F.conv2d(named["x"].float(), named["w"].float(), stride=r["stride"])
        if r["init"] == "tensor":
            ref = ref + named["c"].float()
        return ref
    raise ValueError(r["kind"])


def peer(k, named):
    """The PyTorch op doing the same work in the same dtype (cuBLAS / cuDNN)."""
    r = k["ref"]
    if r["kind"] == "matmul":
        a, b = named["a"], named["b"]
        bb = b.t() if r["transb"] else b
        return lambda: torch.matmul(a, bb)
    if r["kind"] == "bmm":
        return lambda: torch.bmm(named["a"], named["b"])
    x, w = named["x"], named["w"]
    return lambda: F.conv2d(x, w, stride=r["stride"])


def time_fn(fn, reps, inner):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(inner):
            fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / inner)
    return statistics.median(times)


def flops(k):
    a = {x["role"]: x["shape"] for x in k["args"]}
    r = k["ref"]
    if r["kind"] == "matmul":
        return 2 * r["M"] * r["N"] * r["K"]
    if r["kind"] == "bmm":
        b, m, kk = a["a"]
        return 2 * b * m * kk * a["b"][2]
    n, f, oh, ow = a["out"]
    _, c, kh, kw = a["w"]
    return 2 * n * f * oh * ow * c * kh * kw


def main():
    argv = sys.argv[1:]
    d = argv[0] if argv and not argv[0].startswith("--") else ".gemm_artifacts"
    only = argv[argv.index("--only") + 1] if "--only" in argv else ""
    reps = int(argv[argv.index("--reps") + 1]) if "--reps" in argv else 15
    with open(os.path.join(d, "manifest.json")) as f:
        manifest = [k for k in json.load(f) if only in k["name"]]
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    results = []
    for k in manifest:
        res = {"name": k["name"], "engine": k["engine"]}
        try:
            mod, fn, how = load_kernel(d, k)
            args = make_args(k, gen)
            named = {a["role"]: t for a, t in zip(k["args"], args)}
            ptrs = tuple(np.uint64(t.data_ptr()) for t in args)
            grid, block = tuple(k["grid"]), tuple(k["block"])

            def launch():
                fn(grid, block, ptrs, shared_mem=k["smem"])

            launch()
            torch.cuda.synchronize()
            out = named["out"].float()
            ref = reference(k, named)
            nan = int(torch.isnan(out).sum())
            err = float((out.nan_to_num(1e30) - ref).norm() / ref.norm())
            res.update(load=how, rel_err=err, nan=nan)
            if nan:
                idx = torch.nonzero(torch.isnan(out))[:4].tolist()
                res["nan_at"] = idx
            in_dtype = named["a" if "a" in named else "x"].dtype
            tol = 1e-5 if in_dtype == torch.float32 else 3e-3
            res["ok"] = bool(nan == 0 and err < tol)
            # second launch on fresh poison: the result must not depend on leftovers
            named["out"].fill_(float("nan"))
            launch()
            torch.cuda.synchronize()
            res["repeat_same"] = bool(torch.equal(named["out"].float(), out))
            inner = max(1, min(50, int(2e10 / max(flops(k), 1))))
            t_ours = time_fn(launch, reps, inner)
            t_peer = time_fn(peer(k, named), reps, inner)
            res.update(ms=t_ours, peer_ms=t_peer, ratio=t_peer / t_ours,
                       tflops=flops(k) / t_ours / 1e9, peer_tflops=flops(k) / t_peer / 1e9)
        except Exception as e:  # noqa: BLE001 - report and go on with the next kernel
            res.update(ok=False, error=f"{type(e).__name__}: {e}"[:300])
        results.append(res)
        print(json.dumps(res), flush=True)
    print(f"\n{'kernel':32s} {'ok':>3s} {'rel_err':>9s} {'ms':>8s} {'torch':>8s} "
          f"{'ratio':>6s} {'TF/s':>6s}")
    for r in results:
        if "ms" in r:
            print(f"{r['name']:32s} {'yes' if r['ok'] else 'NO':>3s} {r['rel_err']:9.2e} "
                  f"{r['ms']:8.4f} {r['peer_ms']:8.4f} {r['ratio']:6.2f} {r['tflops']:6.1f}")
        else:
            print(f"{r['name']:32s}  NO {r.get('error', '')[:120]}")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
