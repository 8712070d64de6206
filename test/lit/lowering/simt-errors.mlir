// Bad input: an unknown target, a schedule that does not fit the hardware, an op no builder
// takes. Each is one located error line.
// RUN: not quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_12})' 2>&1 | %filecheck %s --check-prefix=TARGET
// RUN: not quartet-opt %s --split-input-file --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_90})' 2>&1 | %filecheck %s

// TARGET: error: bad option for pass 'quartet-lower-gpu': unknown GPU target 'sm_12' (known: sm_90, sm_80, gfx942)

#id = affine_map<(d0, d1) -> (d0, d1)>
func.func @too_many_threads(%x: tensor<64x256xf32>) -> tensor<64x256xf32> {
  %r = "quartet.tile"() ({
    %e = tensor.empty() : tensor<64x256xf32>
    %y = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]}
        ins(%x : tensor<64x256xf32>) outs(%e : tensor<64x256xf32>) {
      ^bb0(%a: f32, %o: f32):
        %0 = math.exp %a : f32
        linalg.yield %0 : f32
    } -> tensor<64x256xf32>
    gpu.yield %y : tensor<64x256xf32>
  }) {threads = 2000 : i64} : () -> tensor<64x256xf32>
  return %r : tensor<64x256xf32>
}
// CHECK: simt-errors.mlir:10:8: error: 'quartet.tile' threads=2000 does not fit the hardware (a multiple of 32 or a power of two below it, at most 1024)
