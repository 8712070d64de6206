// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_90 stop_after=kernels})' | %filecheck %s

// The TMA kernel (lowering/kernels/gemm_tma.py) of an f16 matmul tile with Roller's schedule
// (block 128x256): two consumer warpgroups (wgmma) and one producer warpgroup (TMA copies)
// around an mbarrier pipeline, persistent over the tiles, with a staged epilogue. The kernel
// takes one tensor map per operand; the runtime encodes it from the operand's address.

// CHECK-LABEL: func.func private @q0_body(
// CHECK-SAME:    %{{[a-z0-9_]+}}: index,
// CHECK-SAME:    memref<256x128xf16> {quartet.role = "input"},
// CHECK-SAME:    memref<128x256xf16> {quartet.role = "input"},
// CHECK-SAME:    memref<256x256xf32> {quartet.role = "input"},
// CHECK-SAME:    memref<256x256xf32> {quartet.role = "output"},
// A [M, K] row-major: boxes of 64 K x 128 rows; B [K, N]: four boxes of 64 columns x 64 K.
// CHECK-SAME:    memref<16xi64> {quartet.role = "tensormap", quartet.tensormap = {box = array<i64: 64, 128>, dims = array<i64: 128, 256>, dtype = "float16", source = 0 : i64, strides = array<i64: 256>, swizzle = 128 : i64}},
// CHECK-SAME:    memref<16xi64> {quartet.role = "tensormap", quartet.tensormap = {box = array<i64: 64, 64>, dims = array<i64: 256, 128>, dtype = "float16", source = 1 : i64, strides = array<i64: 512>, swizzle = 128 : i64}})
// CHECK-SAME:    quartet.block_program = 384 : i64, quartet.chip = "sm_90a", quartet.family = "gemm:wgmma_tma"
// One thread makes a full and an empty barrier per stage.
// CHECK:         scf.if
// CHECK-COUNT-8:   nvvm.mbarrier.init
// CHECK:           nvvm.fence.mbarrier.init
// CHECK:         gpu.barrier
// Consumers: more registers, then the tiles of this block; per step wait for the slot to fill,
// four wgmma, retire the previous step's group and release its slot.
// CHECK:         scf.if
// CHECK-NEXT:      nvvm.setmaxregister  increase 232
// CHECK:           scf.for
// CHECK:             scf.for {{.*}} iter_args({{.*}}) -> (!llvm.struct<(f32,
// CHECK:               nvvm.mbarrier.try_wait.parity
// CHECK:               nvvm.wgmma.fence.aligned
// CHECK-COUNT-4:       nvvm.wgmma.mma_async {{.*}} <m = 64, n = 256, k = 16>
// CHECK-NEXT:          nvvm.wgmma.commit.group.sync.aligned
// CHECK-NEXT:          nvvm.wgmma.wait.group.sync.aligned 1
// CHECK:               nvvm.mbarrier.arrive
// CHECK:             } {loop_annotation = #loop_annotation}
// CHECK:             nvvm.wgmma.wait.group.sync.aligned 0
// CHECK:             nvvm.mbarrier.arrive
// The epilogue, slice by slice, synchronises the consumers only.
// CHECK:             llvm.inline_asm has_side_effects "bar.sync 1, 256;", "~{memory}"
// CHECK:             vector.store {{.*}} : memref<{{.*}}xf32, #gpu.address_space<workgroup>>, vector<2xf32>
// CHECK:             llvm.inline_asm has_side_effects "bar.sync 1, 256;", "~{memory}"
// CHECK:             scf.for
// CHECK:               vector.store {{.*}} {alignment = 16 : i64} : memref<65536xf32>, vector<4xf32>
// The producer warpgroup gives registers back; one thread issues every copy: wait for an empty
// slot, announce its 48 KiB on the full barrier, copy A's box and B's four.
// CHECK:       } else {
// CHECK-NEXT:    nvvm.setmaxregister  decrease 40
// CHECK:         scf.if
// CHECK-COUNT-2:   nvvm.prefetch tensormap
// CHECK:           scf.for
// CHECK:             scf.for
// CHECK:               nvvm.mbarrier.try_wait.parity
// CHECK:               nvvm.mbarrier.arrive.expect_tx %{{.*}}, %c49152_i32
// CHECK-COUNT-5:       nvvm.cp.async.bulk.tensor.shared.cluster.global
// The standalone kernel: a persistent grid of one block per tile here (2 tiles), 384 threads.
// CHECK-LABEL: func.func @q0(
// CHECK:         gpu.launch blocks({{.*}}) in ({{.*}} = %c2, {{.*}}) threads({{.*}}) in ({{.*}} = %c384,
func.func @mm(%a: tensor<256x128xf16>, %b: tensor<128x256xf16>, %c: tensor<256x256xf32>) -> tensor<256x256xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<256x128xf16>, tensor<128x256xf16>) outs(%c : tensor<256x256xf32>) -> tensor<256x256xf32>
    gpu.yield %1 : tensor<256x256xf32>
  }) {block_tile = array<i64: 128, 256, 64>, thread_tile = array<i64: 64, 128, 64>, smem_padding = array<i64: 8, 8>, tensor_core = true, threads = 256 : i64} : () -> tensor<256x256xf32>
  return %0 : tensor<256x256xf32>
}
