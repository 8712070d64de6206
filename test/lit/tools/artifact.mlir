// quartet-opt finishes the IR of any stage into a runnable artifact (-o NAME.qrt): the one
// lowering stage after the pipeline, for the target the tiles were configured for.
// RUN: rm -rf %t && mkdir -p %t
// RUN: quartet-opt %s --pass-pipeline='builtin.module(roller{target=cpu})' -o %t/relu.qrt
// RUN: %PYTHON -c "from quartet.runtime.artifact import load_manifest; m = load_manifest('%t/relu.qrt'); print(m.target, [k.name for k in m.kernels], [i.shape for i in m.inputs], [o.shape for o in m.outputs])" | %filecheck %s --check-prefix=CPU
// CPU: cpu ['forward'] [(4, 8)] [(4, 8)]
// RUN: %PYTHON -c "import numpy as np, quartet.runtime as rt; p = rt.load('%t/relu.qrt'); x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8); print(bool((p(x) == np.maximum(x, 0)).all()))" | %filecheck %s --check-prefix=EXEC
// EXEC: True

// The same IR for sm_90: one kernel in the artifact.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(roller{target=sm_90})' -o %t/relu90.qrt
// RUN: %PYTHON -c "from quartet.runtime.artifact import load_manifest; m = load_manifest('%t/relu90.qrt'); print(m.target, len(m.kernels))" | %filecheck %s --check-prefix=SM90
// SM90: sm_90 1

// IR written at any stage is finished later: configured here, lowered by a second run.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(roller{target=sm_90})' -o %t/configured.mlir
// RUN: quartet-opt %t/configured.mlir -o %t/again.qrt
// RUN: %PYTHON -c "from quartet.runtime.artifact import load_manifest; print(load_manifest('%t/again.qrt').target)" | %filecheck %s --check-prefix=AGAIN
// AGAIN: sm_90

// An artifact is not text: stdout is refused in one line.
// RUN: not quartet-opt %s --emit-artifact 2>&1 | %filecheck %s --check-prefix=STDOUT
// STDOUT: error: quartet-opt: an artifact is written to a file: give -o NAME.qrt (or a folder)

func.func @relu(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<4x8xf32>
  %y = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0, d1)>],
                       iterator_types = ["parallel", "parallel"]}
      ins(%x : tensor<4x8xf32>) outs(%e : tensor<4x8xf32>) {
    ^bb0(%a: f32, %o: f32):
      %r = arith.maximumf %a, %zero : f32
      linalg.yield %r : f32
  } -> tensor<4x8xf32>
  return %y : tensor<4x8xf32>
}
