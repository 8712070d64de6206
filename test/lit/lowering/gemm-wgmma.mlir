// RUN: env QUARTET_GEMM_TMA=0 quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_90 stop_after=kernels})' | %filecheck %s

// The cp.async kernel (QUARTET_GEMM_TMA=0; gemm-tma.mlir shows the TMA one). An f16 matmul
// tile with Roller's schedule (block 128x256, step 64, 256 threads = two
// warpgroups) becomes one gpu.launch: cp.async copies into swizzled shared memory, a pipelined
// loop of wgmma.mma_async (m64n256k16, four per step) and a staged, coalesced epilogue.

// CHECK-LABEL: func.func private @q0_body(
// CHECK-SAME:    %{{[a-z0-9_]+}}: index,
// CHECK-SAME:    %[[A:.*]]: memref<256x128xf16> {quartet.role = "input"},
// CHECK-SAME:    %[[B:.*]]: memref<128x256xf16> {quartet.role = "input"},
// CHECK-SAME:    %[[C:.*]]: memref<256x256xf32> {quartet.role = "input"},
// CHECK-SAME:    %[[O:.*]]: memref<256x256xf32> {quartet.role = "output"})
// CHECK-SAME:    quartet.block_program = 256 : i64, quartet.chip = "sm_90a", quartet.family = "gemm:wgmma", quartet.shared_bytes = {{[0-9]+}} : i64, quartet.virtual_grid = array<i64: 1, 2, 1>
// Every argument is used first, in order, so outlining keeps the function's argument order.
// CHECK:           memref.extract_aligned_pointer_as_index %[[A]]
// CHECK-NEXT:      memref.extract_aligned_pointer_as_index %[[B]]
// CHECK-NEXT:      memref.extract_aligned_pointer_as_index %[[C]]
// CHECK-NEXT:      memref.extract_aligned_pointer_as_index %[[O]]
// Prologue: the first steps' tiles, 16-byte copies that bypass L1.
// CHECK:           scf.for
// CHECK:             nvgpu.device_async_copy {{.*}}, 8 {bypassL1} : memref<32768xf16> to memref<{{.*}}xf16, #gpu.address_space<workgroup>>
// CHECK:             nvvm.cp.async.commit.group
// Main loop: wait for this step's tiles, prefetch a later one, issue the tensor-core work.
// CHECK:           scf.for {{.*}} iter_args({{.*}}) -> (!llvm.struct<(f32,
// CHECK:             nvvm.cp.async.wait.group 1
// CHECK-NEXT:        nvvm.fence.proxy {kind = #nvvm.proxy_kind<async.shared>, space = #nvvm.shared_space<cta>}
// CHECK-NEXT:        gpu.barrier
// CHECK:             nvgpu.device_async_copy
// CHECK:             nvvm.cp.async.commit.group
// CHECK:             nvvm.wgmma.fence.aligned
// CHECK-COUNT-4:     nvvm.wgmma.mma_async {{.*}} <m = 64, n = 256, k = 16>, D[<f32>, <one>], A[<f16>, <one>, <row>], B[<f16>, <one>, <row>]
// CHECK-NEXT:        nvvm.wgmma.commit.group.sync.aligned
// CHECK-NEXT:        nvvm.wgmma.wait.group.sync.aligned 1
// CHECK:           } {loop_annotation = #loop_annotation}
// CHECK:           nvvm.wgmma.wait.group.sync.aligned 0
// Epilogue: fragments to shared memory, then 16-byte chunks with the init tensor added.
// CHECK:           vector.store {{.*}} : memref<{{.*}}xf32, #gpu.address_space<workgroup>>, vector<2xf32>
// CHECK:           gpu.barrier
// CHECK:           scf.for
// CHECK:             vector.load {{.*}} : memref<{{.*}}xf32, #gpu.address_space<workgroup>>, vector<4xf32>
// CHECK:             vector.load {{.*}} : memref<65536xf32>, vector<4xf32>
// CHECK:             arith.addf
// CHECK:             vector.store {{.*}} : memref<65536xf32>, vector<4xf32>
// CHECK:           return
// The standalone kernel: two blocks of 256 threads, each running the body for blockIdx.x.
// CHECK-LABEL: func.func @q0(
// CHECK-SAME:    quartet.chip = "sm_90a"
// CHECK:         gpu.launch blocks(%[[BX:.*]], %{{.*}}, %{{.*}}) in ({{.*}} = %c2, {{.*}} = %c1, {{.*}} = %c1{{.*}}) threads({{.*}}) in ({{.*}} = %c256,
// CHECK-SAME:      dynamic_shared_memory_size
// CHECK-NEXT:      func.call @q0_body(%[[BX]], 
func.func @mm(%a: tensor<256x128xf16>, %b: tensor<128x256xf16>, %c: tensor<256x256xf32>) -> tensor<256x256xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<256x128xf16>, tensor<128x256xf16>) outs(%c : tensor<256x256xf32>) -> tensor<256x256xf32>
    gpu.yield %1 : tensor<256x256xf32>
  }) {block_tile = array<i64: 128, 256, 64>, thread_tile = array<i64: 64, 128, 64>, smem_padding = array<i64: 8, 8>, tensor_core = true, threads = 256 : i64} : () -> tensor<256x256xf32>
  return %0 : tensor<256x256xf32>
}
