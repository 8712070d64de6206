// A tile the GEMM family cannot take, although the passes recorded it for that family
// (kernel = "gemm"): one line naming the op, the reason and the place.

// RUN: not quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_80 stop_after=kernels})' 2>&1 | %filecheck %s --check-prefix=THREADS
// THREADS: gemm-errors.mlir:11:8: error: 'linalg.matmul' schedule not supported: threads = 256 but the warp tiles need 128
// THREADS-NOT: Traceback

// RUN: not quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=gfx942 stop_after=kernels})' 2>&1 | %filecheck %s --check-prefix=TARGET
// TARGET: error: the GEMM lowering has no kernels for AMD Instinct MI300X (CDNA3, gfx942)
func.func @bad_threads(%a: tensor<256x128xf16>, %b: tensor<128x256xf16>, %c: tensor<256x256xf32>) -> tensor<256x256xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<256x128xf16>, tensor<128x256xf16>) outs(%c : tensor<256x256xf32>) -> tensor<256x256xf32>
    gpu.yield %1 : tensor<256x256xf32>
  }) {block_tile = array<i64: 128, 128, 32>, thread_tile = array<i64: 64, 64, 32>, smem_padding = array<i64: 8, 8>, tensor_core = true, threads = 256 : i64, kernel = "gemm"} : () -> tensor<256x256xf32>
  return %0 : tensor<256x256xf32>
}


// RUN: not quartet-opt %S/inputs/gemm-elementwise.mlir --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_90 stop_after=kernels})' 2>&1 | %filecheck %s --check-prefix=OP
// OP: gemm-elementwise.mlir:2:8: error: 'linalg.generic' is not supported by the GEMM lowering: tile must hold exactly one matmul, batch_matmul, conv_2d_nchw_fchw or matmul-like linalg.generic
