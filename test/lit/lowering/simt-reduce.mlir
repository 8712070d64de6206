// Reductions over an outer axis (colreduce: fp32 accumulation of fp16 data, a shared-memory
// tree across the threads of a column) and a pooling op through the transform-dialect fallback.
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_90 stop_after=kernels})' | %filecheck %s
// The AMD route up to the relocatable object (linking the hsaco needs ld.lld: test_binaries.py).
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(quartet-lower-gpu{target=gfx942 stop_after=kernels},quartet-gpu-to-binary{target=gfx942 emit=obj})' | %filecheck %s --check-prefix=AMD

#id = affine_map<(d0, d1) -> (d0, d1)>
#col = affine_map<(d0, d1) -> (d1)>
func.func @colsum(%x: tensor<512x256xf16>) -> tensor<256xf16> {
  %zero = arith.constant 0.0 : f16
  %r = "quartet.tile"() ({
    %e = tensor.empty() : tensor<256xf16>
    %f = linalg.fill ins(%zero : f16) outs(%e : tensor<256xf16>) -> tensor<256xf16>
    %s = linalg.generic {indexing_maps = [#id, #col], iterator_types = ["reduction", "parallel"]}
        ins(%x : tensor<512x256xf16>) outs(%f : tensor<256xf16>) {
      ^bb0(%a: f16, %o: f16):
        %0 = arith.addf %a, %o : f16
        linalg.yield %0 : f16
    } -> tensor<256xf16>
    gpu.yield %s : tensor<256xf16>
  }) : () -> tensor<256xf16>
  return %r : tensor<256xf16>
}
// The column tree's workgroup buffer is a view of the block program's dynamic shared memory.
// CHECK-LABEL: func.func private @q0_body(
// CHECK-SAME: quartet.family = "colreduce", quartet.shared_bytes = {{[1-9][0-9]*}} : i64
// CHECK: %[[DYN:.*]] = gpu.dynamic_shared_memory : memref<?xi8, #gpu.address_space<workgroup>>
// CHECK: memref.view %[[DYN]][%{{.*}}][] : memref<?xi8, #gpu.address_space<workgroup>> to memref<{{[0-9]+}}xf32, #gpu.address_space<workgroup>>
// CHECK: scf.for {{.*}} iter_args({{.*}}) -> (vector<8xf32>)
// CHECK: vector.load {{.*}} : memref<512x256xf16>, vector<8xf16>
// CHECK: arith.extf {{.*}} : vector<8xf16> to vector<8xf32>
// CHECK: gpu.barrier
// CHECK: arith.truncf {{.*}} : vector<8xf32> to vector<8xf16>
// CHECK: vector.store
// CHECK-LABEL: func.func @q0(
// CHECK: gpu.launch {{.*}} dynamic_shared_memory_size
// AMD-LABEL: func.func @q0(
// AMD: gpu.launch_func @q0_kernel::@q0_kernel
// AMD: gpu.binary @q0_kernel {{.*}}#rocdl.target<O = 3, chip = "gfx942">, bin = "\7FELF\02\01\01@\04\00\00\00\00\00\00\00\01\00\E0\00

// -----

func.func @maxpool(%x: tensor<2x8x16x16xf16>) -> tensor<2x8x8x8xf16> {
  %ninf = arith.constant 0xFC00 : f16
  %r = "quartet.tile"() ({
    %e = tensor.empty() : tensor<2x8x8x8xf16>
    %f = linalg.fill ins(%ninf : f16) outs(%e : tensor<2x8x8x8xf16>) -> tensor<2x8x8x8xf16>
    %w = tensor.empty() : tensor<2x2xf16>
    %p = linalg.pooling_nchw_max {dilations = dense<1> : vector<2xi64>, strides = dense<2> : vector<2xi64>}
        ins(%x, %w : tensor<2x8x16x16xf16>, tensor<2x2xf16>) outs(%f : tensor<2x8x8x8xf16>) -> tensor<2x8x8x8xf16>
    gpu.yield %p : tensor<2x8x8x8xf16>
  }) {block_tile = array<i64: 1, 1, 8, 8, 2, 2>, thread_tile = array<i64: 1, 1, 1, 1, 2, 2>} : () -> tensor<2x8x8x8xf16>
  return %r : tensor<2x8x8x8xf16>
}
// The fallback's 8 x 2 grid is delinearised from the virtual block (x fastest).
// CHECK-LABEL: func.func private @q0_body(
// CHECK-SAME: %[[VB:[a-z0-9]+]]: index,
// CHECK-SAME: quartet.family = "fallback", quartet.shared_bytes = 0 : i64, quartet.virtual_grid = array<i64: 8, 2, 1>
// CHECK-DAG: arith.remui %[[VB]], %c8
// CHECK-DAG: arith.divui %[[VB]], %c8
// CHECK: gpu.thread_id
// CHECK: arith.maximumf
// CHECK-LABEL: func.func @q0(
// CHECK: gpu.launch blocks({{.*}}) in ({{.*}} = %c16, {{.*}} = %c1, {{.*}}) threads({{.*}}) in ({{.*}} = %c64,
// AMD-LABEL: func.func @q0(
// AMD: gpu.binary @q0_kernel {{.*}}#rocdl.target<O = 3, chip = "gfx942">, bin = "\7FELF
