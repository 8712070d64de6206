// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_80 stop_after=kernels})' | %filecheck %s

// A fused tile (fill + matmul with B given as [N, K] + bias + cast to f16, as roller-fuse makes
// it) for sm_80: the schedule is written for the tile's root, the matmul (TileOp.root: the op
// with the most loops): block 64x128 with a 64-wide step, warp tiles 32x64. mma.sync m16n8k16 with ldmatrix fragments
// (B is K-major: no transpose), the fill's zero start, and the bias add and f16 cast evaluated
// per element in the coalesced epilogue.

// CHECK-LABEL: func.func private @q0_body(
// CHECK-SAME:    %{{[a-z0-9_]+}}: index,
// CHECK-SAME:    memref<128x64xf16> {quartet.role = "input"}, %{{.*}}: memref<256x64xf16> {quartet.role = "input"},
// CHECK-SAME:    memref<256xf32> {quartet.role = "input"}, %{{.*}}: memref<128x256xf16> {quartet.role = "input"},
// CHECK-SAME:    memref<128x256xf16> {quartet.role = "output"})
// CHECK-SAME:    quartet.chip = "sm_80", quartet.family = "gemm:mma", quartet.shared_bytes = {{[0-9]+}} : i64, quartet.virtual_grid = array<i64: 2, 2, 1>
// CHECK-NOT:     tensor.empty
// CHECK:           scf.for {{.*}} iter_args({{.*}}) -> (vector<2x2xf32>
// CHECK:             nvvm.cp.async.wait.group 2
// CHECK-NEXT:        gpu.barrier
// CHECK:             nvgpu.ldmatrix {{.*}} {numTiles = 4 : i32, transpose = false} : memref<{{.*}}xf16, #gpu.address_space<workgroup>> -> vector<4x2xf16>
// CHECK-COUNT-64:    nvgpu.mma.sync({{.*}}) {mmaShape = [16, 8, 16]} : (vector<4x2xf16>, vector<2x2xf16>, vector<2x2xf32>) -> vector<2x2xf32>
// CHECK:           scf.for
// CHECK:             vector.load {{.*}} : memref<{{.*}}xf32, #gpu.address_space<workgroup>>, vector<8xf32>
// CHECK:             memref.load {{.*}} : memref<256xf32>
// CHECK-NEXT:        arith.addf
// CHECK-NEXT:        arith.truncf {{.*}} : f32 to f16
// CHECK:             vector.store {{.*}} : memref<32768xf16>, vector<8xf16>
// CHECK-LABEL: func.func @q0(
// CHECK:         gpu.launch blocks({{.*}}) in ({{.*}} = %c4, {{.*}} = %c1, {{.*}} = %c1{{.*}})
// CHECK:           func.call @q0_body(
func.func @mmt(%a: tensor<128x64xf16>, %b: tensor<256x64xf16>, %bias: tensor<256xf32>, %e: tensor<128x256xf16>) -> tensor<128x256xf16> {
  %0 = "quartet.tile"() ({
    %cst = arith.constant 0.0 : f32
    %init = tensor.empty() : tensor<128x256xf32>
    %f = linalg.fill ins(%cst : f32) outs(%init : tensor<128x256xf32>) -> tensor<128x256xf32>
    %1 = linalg.matmul indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d2)>, affine_map<(d0, d1, d2) -> (d1, d2)>, affine_map<(d0, d1, d2) -> (d0, d1)>] ins(%a, %b : tensor<128x64xf16>, tensor<256x64xf16>) outs(%f : tensor<128x256xf32>) -> tensor<128x256xf32>
    %2 = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d1)>, affine_map<(d0, d1) -> (d0, d1)>], iterator_types = ["parallel", "parallel"]} ins(%1, %bias : tensor<128x256xf32>, tensor<256xf32>) outs(%e : tensor<128x256xf16>) {
    ^bb0(%x: f32, %y: f32, %o: f16):
      %s = arith.addf %x, %y : f32
      %t = arith.truncf %s : f32 to f16
      linalg.yield %t : f16
    } -> tensor<128x256xf16>
    gpu.yield %2 : tensor<128x256xf16>
  }) {block_tile = array<i64: 64, 128, 64>, thread_tile = array<i64: 32, 64, 64>, smem_padding = array<i64: 8, 8>, tensor_core = true, threads = 128 : i64} : () -> tensor<128x256xf16>
  return %0 : tensor<128x256xf16>
}
