// Roller's tile programs for one operator per tile. Attributes print in name order:
// block_tile, grid, kernel (the block program that takes the tile), smem_padding, target,
// tensor_core, thread_tile, threads.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(roller-config{target=sm_90})' | filecheck %s
// RUN: quartet-opt %s --pass-pipeline='builtin.module(roller-config{target=sm_90 topk=2})' | filecheck %s --check-prefix=TOPK
// RUN: quartet-opt %s --pass-pipeline='builtin.module(roller-config{target=gfx942})' | filecheck %s --check-prefix=AMD
// RUN: quartet-opt %s --pass-pipeline='builtin.module(roller-config{target=cpu})' | filecheck %s --check-prefix=CPU
// RUN: not quartet-opt %s --pass-pipeline='builtin.module(roller-config{target=sm_99})' 2>&1 | filecheck %s --check-prefix=TARGET

// TARGET: error: unknown target 'sm_99' (known targets: sm_90, sm_80, gfx942, cpu)

// fp16 GEMM: tensor cores, 4-warp multiples, 16-byte padding of the staged rows.
// CHECK-LABEL: func.func @matmul_f16
// CHECK: "quartet.tile"() ({
// CHECK: linalg.matmul
// CHECK: }) {block_tile = array<i64: 128, 256, 64>, grid = array<i64: 32, 16>, kernel = "gemm", smem_padding = array<i64: 8, 8>, target = "sm_90", tensor_core = true, thread_tile = array<i64: 16, 256, 64>, threads = 256 : i64}
// TOPK-LABEL: func.func @matmul_f16
// TOPK: candidates = [{block_tile = array<i64: 128, 256, 64>, {{.*}}}, {block_tile = {{.*}}}]
// AMD-LABEL: func.func @matmul_f16
// AMD: target = "gfx942", tensor_core = true
// CPU-LABEL: func.func @matmul_f16
// CPU: target = "cpu", tensor_core = false
func.func @matmul_f16(%a: tensor<4096x4096xf16>, %b: tensor<4096x4096xf16>, %c: tensor<4096x4096xf32>) -> tensor<4096x4096xf32> {
  %r = "quartet.tile"() ({
    %m = linalg.matmul ins(%a, %b : tensor<4096x4096xf16>, tensor<4096x4096xf16>) outs(%c : tensor<4096x4096xf32>) -> tensor<4096x4096xf32>
    gpu.yield %m : tensor<4096x4096xf32>
  }) : () -> tensor<4096x4096xf32>
  return %r : tensor<4096x4096xf32>
}

// fp32 GEMM: CUDA cores, an 8x8-ish register tile per thread, one bank word of padding.
// CHECK-LABEL: func.func @matmul_f32
// CHECK: }) {block_tile = array<i64: {{.*}}>, grid = array<i64: {{.*}}>, kernel = "gemm", smem_padding = array<i64: 1, 1>, target = "sm_90", tensor_core = false, thread_tile = array<i64: {{.*}}>, threads = {{64|128|256}} : i64}
func.func @matmul_f32(%a: tensor<1024x1024xf32>, %b: tensor<1024x1024xf32>, %c: tensor<1024x1024xf32>) -> tensor<1024x1024xf32> {
  %r = "quartet.tile"() ({
    %m = linalg.matmul ins(%a, %b : tensor<1024x1024xf32>, tensor<1024x1024xf32>) outs(%c : tensor<1024x1024xf32>) -> tensor<1024x1024xf32>
    gpu.yield %m : tensor<1024x1024xf32>
  }) : () -> tensor<1024x1024xf32>
  return %r : tensor<1024x1024xf32>
}

// Small M: the block shrinks until the grid fills the 132 SMs; warps cooperate on K.
// CHECK-LABEL: func.func @small_m
// CHECK: }) {block_tile = array<i64: 16, 16, 64>, grid = array<i64: 1, 256>, kernel = "gemm", smem_padding = array<i64: 8, 8>, target = "sm_90", tensor_core = true, thread_tile = array<i64: 16, 16, 16>, threads = 128 : i64}
func.func @small_m(%a: tensor<16x4096xf16>, %b: tensor<4096x4096xf16>, %c: tensor<16x4096xf32>) -> tensor<16x4096xf32> {
  %r = "quartet.tile"() ({
    %m = linalg.matmul ins(%a, %b : tensor<16x4096xf16>, tensor<4096x4096xf16>) outs(%c : tensor<16x4096xf32>) -> tensor<16x4096xf32>
    gpu.yield %m : tensor<16x4096xf32>
  }) : () -> tensor<16x4096xf32>
  return %r : tensor<16x4096xf32>
}

// Convolution as an implicit GEMM on tensor cores: window loops (r, s) staged whole.
// CHECK-LABEL: func.func @conv3x3
// The implicit GEMM as the wgmma lowering runs it: 64 filters x 128 pixels (a 2x8x8 box), a
// 64-deep step of the flattened (c, kh, kw), one warpgroup (lowering/device/NOTES.md).
// CHECK: }) {block_tile = array<i64: 2, 64, 8, 8, 64, 1, 1>, grid = array<i64: 16, 1, 7, 7>, {{.*}}tensor_core = true, thread_tile = array<i64: 2, 16, 8, 8, 64, 1, 1>, threads = 128 : i64}
func.func @conv3x3(%x: tensor<32x64x58x58xf16>, %w: tensor<64x64x3x3xf16>, %y: tensor<32x64x56x56xf32>) -> tensor<32x64x56x56xf32> {
  %r = "quartet.tile"() ({
    %m = linalg.conv_2d_nchw_fchw {strides = dense<1> : tensor<2xi64>, dilations = dense<1> : tensor<2xi64>} ins(%x, %w : tensor<32x64x58x58xf16>, tensor<64x64x3x3xf16>) outs(%y : tensor<32x64x56x56xf32>) -> tensor<32x64x56x56xf32>
    gpu.yield %m : tensor<32x64x56x56xf32>
  }) : () -> tensor<32x64x56x56xf32>
  return %r : tensor<32x64x56x56xf32>
}

// Row reduction (softmax): one thread per row lane group, 16-byte vectors along the row.
// CHECK-LABEL: func.func @softmax_rows
// CHECK: }) {block_tile = array<i64: 2, 4096>, grid = array<i64: 4096>, kernel = "fallback", smem_padding = array<i64: 0>, target = "sm_90", tensor_core = false, thread_tile = array<i64: 1, 32>, threads = 256 : i64}
func.func @softmax_rows(%x: tensor<8192x4096xf16>, %init: tensor<8192xf16>) -> tensor<8192xf16> {
  %r = "quartet.tile"() ({
    %s = linalg.reduce ins(%x : tensor<8192x4096xf16>) outs(%init : tensor<8192xf16>) dimensions = [1]
      (%in: f16, %acc: f16) {
        %t = arith.maximumf %in, %acc : f16
        linalg.yield %t : f16
      }
    gpu.yield %s : tensor<8192xf16>
  }) : () -> tensor<8192xf16>
  return %r : tensor<8192xf16>
}

// Elementwise with a broadcast bias: the flat schedule (issue 13), 256 threads each loading two
// 16-byte vectors (the H200's bandwidth x latency per SM over 2048 resident threads), no shared
// memory.
// CHECK-LABEL: func.func @bias_gelu
// CHECK: }) {block_tile = array<i64: 1, 4096>, grid = array<i64: 8192, 2>, kernel = "row", smem_padding = array<i64: 0, 0>, target = "sm_90", tensor_core = false, thread_tile = array<i64: 1, 16>, threads = 256 : i64}
#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d1)>
func.func @bias_gelu(%x: tensor<8192x8192xf16>, %b: tensor<8192xf16>, %y: tensor<8192x8192xf16>) -> tensor<8192x8192xf16> {
  %r = "quartet.tile"() ({
    %g = linalg.generic {indexing_maps = [#id, #row, #id], iterator_types = ["parallel", "parallel"]} ins(%x, %b : tensor<8192x8192xf16>, tensor<8192xf16>) outs(%y : tensor<8192x8192xf16>) {
    ^bb0(%p: f16, %q: f16, %o: f16):
      %s = arith.addf %p, %q : f16
      %u = arith.mulf %s, %p : f16
      linalg.yield %u : f16
    } -> tensor<8192x8192xf16>
    gpu.yield %g : tensor<8192x8192xf16>
  }) : () -> tensor<8192x8192xf16>
  return %r : tensor<8192x8192xf16>
}

// A schedule given by hand is kept; the attributes that follow from it are filled in.
// CHECK-LABEL: func.func @hand_given
// CHECK: }) {block_tile = array<i64: 64, 64, 16>, grid = array<i64: 16, 16>, kernel = "gemm", smem_padding = array<i64: 1, 1>, target = "sm_90", tensor_core = false, thread_tile = array<i64: 4, 4, 16>, threads = 256 : i64}
// CPU-LABEL: func.func @hand_given
// CPU: }) {block_tile = array<i64: 64, 64, 16>, grid = array<i64: 16, 16>, smem_padding = array<i64: 0, 0>, target = "cpu", tensor_core = false, thread_tile = array<i64: 4, 4, 16>, threads = 256 : i64}
func.func @hand_given(%a: tensor<1024x1024xf32>, %b: tensor<1024x1024xf32>, %c: tensor<1024x1024xf32>) -> tensor<1024x1024xf32> {
  %r = "quartet.tile"() ({
    %m = linalg.matmul ins(%a, %b : tensor<1024x1024xf32>, tensor<1024x1024xf32>) outs(%c : tensor<1024x1024xf32>) -> tensor<1024x1024xf32>
    gpu.yield %m : tensor<1024x1024xf32>
  }) {block_tile = array<i64: 64, 64, 16>, thread_tile = array<i64: 4, 4, 16>} : () -> tensor<1024x1024xf32>
  return %r : tensor<1024x1024xf32>
}

// A transpose: a full set of sub-partitions (128 threads, not 2), 32 lanes along the input's
// contiguous loop (d0: coalesced reads); on the CPU a register tile that fits the vector file.
// CHECK-LABEL: func.func @transpose
// CHECK: }) {block_tile = array<i64: 32, 8>, grid = array<i64: 2, 32>, kernel = "fallback", smem_padding = array<i64: 0>, target = "sm_90", tensor_core = false, thread_tile = array<i64: 1, 2>, threads = 128 : i64}
// AMD-LABEL: func.func @transpose
// AMD: target = "gfx942", tensor_core = false, thread_tile = array<i64: {{[0-9]+}}, {{[0-9]+}}>, threads = 256 : i64}
// CPU-LABEL: func.func @transpose
// CPU: }) {block_tile = array<i64: 64, 16>, grid = array<i64: 1, 16>, smem_padding = array<i64: 0>, target = "cpu", tensor_core = false, thread_tile = array<i64: 8, 4>, threads = 32 : i64}
func.func @transpose(%x: tensor<256x64xf32>, %y: tensor<64x256xf32>) -> tensor<64x256xf32> {
  %r = "quartet.tile"() ({
    %t = linalg.transpose ins(%x : tensor<256x64xf32>) outs(%y : tensor<64x256xf32>) permutation = [1, 0]
    gpu.yield %t : tensor<64x256xf32>
  }) : () -> tensor<64x256xf32>
  return %r : tensor<64x256xf32>
}

// Scalar code of a torch.cond predicate: no loops, one thread, every target.
// CHECK-LABEL: func.func @zero_loops
// CHECK: }) {block_tile = array<i64>, grid = array<i64>, kernel = "fallback", smem_padding = array<i64: 0>, target = "sm_90", tensor_core = false, thread_tile = array<i64>, threads = 1 : i64}
// CPU-LABEL: func.func @zero_loops
// CPU: }) {block_tile = array<i64>, grid = array<i64>, smem_padding = array<i64: 0>, target = "cpu", tensor_core = false, thread_tile = array<i64>, threads = 1 : i64}
func.func @zero_loops(%x: tensor<f32>, %y: tensor<i1>) -> tensor<i1> {
  %zero = arith.constant 0.0 : f32
  %r = "quartet.tile"() ({
    %p = linalg.generic {indexing_maps = [affine_map<() -> ()>, affine_map<() -> ()>], iterator_types = []} ins(%x : tensor<f32>) outs(%y : tensor<i1>) {
    ^bb0(%in: f32, %out: i1):
      %c = arith.cmpf ogt, %in, %zero : f32
      linalg.yield %c : i1
    } -> tensor<i1>
    gpu.yield %p : tensor<i1>
  }) : () -> tensor<i1>
  return %r : tensor<i1>
}
