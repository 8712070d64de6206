// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_90 stop_after=kernels})' | %filecheck %s

// A 3x3 NCHW convolution (input already padded) as an implicit GEMM: M = filters, N = output
// pixels, K = (channel, kernel row, kernel column). The filter is copied with cp.async; the
// input is gathered element by element (im2col indexing inside the kernel, nothing
// materialized): per-pixel offsets stay in registers, the K-dependent offsets come from a table
// the block builds in shared memory once. Two stages, wgmma on the staged tiles.

// CHECK-LABEL: func.func private @q0_body(
// CHECK-SAME:    %{{[a-z0-9_]+}}: index,
// CHECK-SAME:    %[[X:.*]]: memref<2x64x10x10xf16> {quartet.role = "input"}, %[[W:.*]]: memref<64x64x3x3xf16> {quartet.role = "input"},
// CHECK-DAG:       %[[XF:.*]] = memref.collapse_shape %[[X]] {{\[\[}}0, 1, 2, 3]] : memref<2x64x10x10xf16> into memref<12800xf16>
// CHECK-DAG:       %[[WF:.*]] = memref.collapse_shape %[[W]] {{\[\[}}0, 1, 2, 3]] : memref<64x64x3x3xf16> into memref<36864xf16>
// The K-offset table: one i32 per K index, filled by the block's threads.
// CHECK:           scf.for %{{.*}} = %thread_id_x{{.*}} to %c576 step %c128
// CHECK:             memref.store {{.*}} : memref<576xi32, #gpu.address_space<workgroup>>
// CHECK:           gpu.barrier
// Prologue: the filter tile by cp.async, the input tile gathered into registers and stored.
// CHECK:           nvgpu.device_async_copy %[[WF]]
// CHECK:           memref.load {{.*}} : memref<576xi32, #gpu.address_space<workgroup>>
// CHECK-COUNT-8:   memref.load %[[XF]]
// CHECK:           vector.store {{.*}} : memref<{{.*}}xf16, #gpu.address_space<workgroup>>, vector<8xf16>
// Main loop: double-buffered; the next input tile is gathered while wgmma runs on this one.
// CHECK:           scf.for {{.*}} iter_args
// CHECK:             nvvm.cp.async.wait.group 0
// CHECK-NEXT:        nvvm.fence.proxy
// CHECK-NEXT:        gpu.barrier
// CHECK:             memref.load %[[XF]]
// CHECK:             nvvm.wgmma.fence.aligned
// CHECK-COUNT-4:     nvvm.wgmma.mma_async {{.*}} <m = 64, n = 128, k = 16>
// CHECK:             nvvm.wgmma.wait.group.sync.aligned 0
// CHECK:             vector.store {{.*}} : memref<{{.*}}xf16, #gpu.address_space<workgroup>>, vector<8xf16>
// CHECK:           } {loop_annotation
// CHECK-LABEL: func.func @q0(
// CHECK:         gpu.launch
// CHECK:           func.call @q0_body(
func.func @conv(%x: tensor<2x64x10x10xf16>, %w: tensor<64x64x3x3xf16>, %c: tensor<2x64x8x8xf32>) -> tensor<2x64x8x8xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.conv_2d_nchw_fchw {dilations = dense<1> : vector<2xi64>, strides = dense<1> : vector<2xi64>} ins(%x, %w : tensor<2x64x10x10xf16>, tensor<64x64x3x3xf16>) outs(%c : tensor<2x64x8x8xf32>) -> tensor<2x64x8x8xf32>
    gpu.yield %1 : tensor<2x64x8x8xf32>
  }) {block_tile = array<i64: 1, 64, 2, 64, 64, 1, 1>, thread_tile = array<i64: 1, 64, 2, 64, 64, 1, 1>, smem_padding = array<i64: 0, 0>, tensor_core = true, threads = 128 : i64} : () -> tensor<2x64x8x8xf32>
  return %0 : tensor<2x64x8x8xf32>
}
