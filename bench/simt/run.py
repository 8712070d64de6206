"""Run on the GPU machine (no MLIR there): check and time the kernels that build.py compiled.

For each case in ``<dir>/cases.json``: load ``<case>.cubin`` with CuPy, make fresh random fp16
inputs with PyTorch, poison the output, launch, compare with PyTorch in float64 (relative L2
error and max abs error; every output element must be written), then time with CUDA events
(median of 50 after 10 warm-ups, rotating 3 input sets larger than L2 where they fit) against
PyTorch eager and torch.compile, and give % of the HBM roofline (bytes = each input read once +
output written once, over 3.0 TB/s, or over the device-to-device copy rate measured here).

    python3 bench/simt/run.py .device_simt_build
"""

import json
import os
import statistics
import sys
import time

import cupy as cp
import numpy as np
import torch
import torch.nn.functional as F

H = torch.float16
REFS = {
    "softmax": lambda x: torch.softmax(x, dim=-1),
    "layernorm": lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b),
    "gelu_bias_scale": lambda x, b, s: F.gelu(x + b) * s,
    "gelu_colscale": lambda x, b, s: F.gelu(x + b) * s,
    "rowsum": lambda x: x.sum(dim=-1),
    "colsum": lambda x: x.sum(dim=0),
    "maxpool": lambda x: F.max_pool2d(x, 2),
    "softmax_n256": lambda x: torch.softmax(x, dim=-1),
    "midsum": lambda x: x.sum(dim=1),
}


def time_it(fn, sets, reps=50, warm=10):
    for i in range(warm):
        fn(*sets[i % len(sets)])
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        args = sets[i % len(sets)]
        a.record()
        fn(*args)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def copy_rate():
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = time_it(lambda: y.copy_(x), [()], reps=20)
    return 2 * x.numel() / (ms * 1e-3)


def main(folder):
    cases = json.load(open(os.path.join(folder, "cases.json")))
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}, torch {torch.__version__}, cupy {cp.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    bw = copy_rate()
    print(f"device-to-device copy: {bw / 1e12:.2f} TB/s", flush=True)
    rows = []
    for name, meta in cases.items():
        ref_fn = REFS[name.split("@")[0]]
        try:
            mod = cp.RawModule(path=os.path.join(folder, f"{name}.cubin"))
            kern = mod.get_function(meta["entry"])
            if meta["shared"]:
                kern.max_dynamic_shared_size_bytes = meta["shared"]
            shapes = [tuple(s) for s in meta["input_shapes"]]
            nbytes_in = sum(int(np.prod(s)) * 2 for s in shapes)
            big = nbytes_in > 60e6
            nsets = 1 if big else 3
            sets = [[torch.randn(*s, dtype=H, device="cuda") for s in shapes]
                    for _ in range(nsets)]
            ref = ref_fn(*sets[0])
            outs = [torch.empty(tuple(a["shape"]), dtype=getattr(torch, a["dtype"]),
                                device="cuda") for a in meta["args"] if a["role"] == "output"]

            def launch(*ins, outs=outs):
                ptrs = []
                for a in meta["args"]:
                    t = ins[a["func_arg"]] if a["role"] == "input" else outs[a["index"]]
                    ptrs.append(np.uint64(t.data_ptr()))
                kern(tuple(meta["grid"]), tuple(meta["block"]), tuple(ptrs),
                     shared_mem=meta["shared"])

            outs[0].fill_(float("nan"))
            launch(*sets[0])
            torch.cuda.synchronize()
            got = outs[0].double()
            want = ref.double()
            unwritten = int(torch.isnan(got).sum())
            rel = float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want))
            maxabs = float((got - want).abs().max())
            # fresh inputs, second check
            fresh = [torch.randn(*s, dtype=H, device="cuda") for s in shapes]
            outs[0].fill_(float("nan"))
            launch(*fresh)
            rel2 = float(torch.linalg.vector_norm(outs[0].double() - ref_fn(*fresh).double())
                         / torch.linalg.vector_norm(ref_fn(*fresh).double()))
            ok = unwritten == 0 and rel < 2e-3 and rel2 < 2e-3
            t_q = time_it(lambda *a: launch(*a), sets)
            t_e = time_it(ref_fn, sets)
            if "@" in name:      # a schedule variant: the peers were timed with the default
                t_c = float("nan")
                nbytes = nbytes_in + ref.numel() * ref.element_size()
                rows.append((name, meta["builder"], ok, rel, rel2, maxabs, unwritten, t_q, t_e,
                             t_c, nbytes / 3.0e12 * 1e3, nbytes / bw * 1e3,
                             meta["compile_s_median"]))
                print(f"{name}: ok={ok} rel={rel:.2e} quartet={t_q:.4f} ms", flush=True)
                continue
            try:
                comp = torch.compile(ref_fn)
                for s in sets:
                    comp(*s)
                t_c = time_it(comp, sets)
            except Exception as e:  # noqa: BLE001
                print(f"  torch.compile failed for {name}: {e}", flush=True)
                t_c = float("nan")
            nbytes = nbytes_in + ref.numel() * ref.element_size()
            roof = nbytes / 3.0e12 * 1e3
            roof_meas = nbytes / bw * 1e3
            rows.append((name, meta["builder"], ok, rel, rel2, maxabs, unwritten, t_q, t_e, t_c,
                         roof, roof_meas, meta["compile_s_median"]))
            print(f"{name}: ok={ok} rel={rel:.2e}/{rel2:.2e} maxabs={maxabs:.2e} "
                  f"unwritten={unwritten} quartet={t_q:.4f} ms eager={t_e:.4f} "
                  f"compile={t_c:.4f} roofline3.0={roof:.4f} ms", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
    print("\n| op | builder | ok | rel err | quartet ms | eager ms | compile ms | x eager | "
          "x compile | % roofline (3.0 TB/s) | % of copy rate | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, b, ok, rel, rel2, maxabs, unw, tq, te, tc, roof, roofm, cs) in rows:
        print(f"| {name} | {b} | {ok} | {max(rel, rel2):.1e} | {tq:.4f} | {te:.4f} | {tc:.4f} | "
              f"{te / tq:.2f} | {tc / tq:.2f} | {100 * roof / tq:.0f}% | {100 * roofm / tq:.0f}% "
              f"| {cs:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".device_simt_build")
