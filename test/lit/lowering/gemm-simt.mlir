// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_90 stop_after=kernels})' | %filecheck %s

// An f32 batch_matmul: SIMT FMA thread tiles (4x4 per thread, 256 threads on a 64x64 block
// tile), both operand tiles staged K-outermost in shared memory with the schedule's padding
// (rows of 64 + 4 elements), two slots, register-staged global loads.

// CHECK-LABEL: func.func private @q0_body(
// CHECK-SAME:    %{{[a-z0-9_]+}}: index,
// CHECK-SAME:    quartet.chip = "sm_90", quartet.family = "gemm:simt", quartet.shared_bytes = {{[0-9]+}} : i64, quartet.virtual_grid = array<i64: 1, 1, 4>
// The batch index is the virtual block (the grid is 1 x 1 x 4).
// CHECK:           vector.load {{.*}} : memref<8192xf32>, vector<2xf32>
// CHECK:           memref.store {{.*}} : memref<1088xf32, #gpu.address_space<workgroup>>
// CHECK:           gpu.barrier
// CHECK:           scf.for {{.*}} iter_args({{.*}}) -> (vector<4xf32>, vector<4xf32>, vector<4xf32>, vector<4xf32>)
// CHECK:             vector.load {{.*}} : memref<1088xf32, #gpu.address_space<workgroup>>, vector<4xf32>
// CHECK-COUNT-4:     vector.fma
// CHECK:             gpu.barrier
// CHECK:           } {loop_annotation
// CHECK:           vector.store {{.*}} : memref<16384xf32>, vector<2xf32>
// CHECK-LABEL: func.func @q0(
// CHECK:         gpu.launch blocks({{.*}}) in ({{.*}} = %c4, {{.*}} = %c1, {{.*}} = %c1{{.*}})
// CHECK:           func.call @q0_body(
func.func @bmm(%a: tensor<4x64x32xf32>, %b: tensor<4x32x64xf32>, %c: tensor<4x64x64xf32>) -> tensor<4x64x64xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.batch_matmul ins(%a, %b : tensor<4x64x32xf32>, tensor<4x32x64xf32>) outs(%c : tensor<4x64x64xf32>) -> tensor<4x64x64xf32>
    gpu.yield %1 : tensor<4x64x64xf32>
  }) {block_tile = array<i64: 1, 64, 64, 8>, thread_tile = array<i64: 1, 4, 4, 8>, smem_padding = array<i64: 4, 4>, tensor_core = false, threads = 256 : i64} : () -> tensor<4x64x64xf32>
  return %0 : tensor<4x64x64xf32>
}
