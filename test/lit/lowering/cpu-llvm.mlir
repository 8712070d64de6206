// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-cpu)' | %filecheck %s
// The roller pipeline with target=cpu ends in the same LLVM-dialect form:
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-inline-tiles,roller{target=cpu},quartet-lower-cpu)' | %filecheck %s

// The entry takes one bare pointer per input, then one per result (caller-allocated output
// buffers), and returns nothing; the module records the tensor signature. Boolean tensors are
// bytes; no two buffers overlap (noalias). Only the LLVM dialect is left, and the only
// external calls are the C allocator.
// CHECK:       module attributes {quartet.cpu_entry = {inputs = [tensor<50x64xf32>, tensor<64x40xf32>, tensor<50x40xi1>], outputs = [tensor<50x40xf32>, tensor<50x40xi1>], symbol = "mm_mask"}}
// CHECK-DAG:   llvm.func @malloc(i64) -> !llvm.ptr
// CHECK-DAG:   llvm.func @free(!llvm.ptr)
// CHECK:       llvm.func @mm_mask(%{{.*}}: !llvm.ptr {llvm.noalias}, %{{.*}}: !llvm.ptr {llvm.noalias}, %{{.*}}: !llvm.ptr {llvm.noalias}, %{{.*}}: !llvm.ptr {llvm.noalias}, %{{.*}}: !llvm.ptr {llvm.noalias}) {
// CHECK:         llvm.fmul
// CHECK:         llvm.fadd
// CHECK:         %[[BYTE:.*]] = llvm.load %{{.*}} : !llvm.ptr -> i8
// CHECK-NEXT:    llvm.trunc %[[BYTE]] : i8 to i1
// CHECK:         llvm.return
// CHECK-NOT:   linalg.
// CHECK-NOT:   scf.
// CHECK-NOT:   memref.
// CHECK-NOT:   func.func
func.func @mm_mask(%a: tensor<50x64xf32>, %b: tensor<64x40xf32>, %m: tensor<50x40xi1>) -> (tensor<50x40xf32>, tensor<50x40xi1>) {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<50x40xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<50x40xf32>) -> tensor<50x40xf32>
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<50x64xf32>, tensor<64x40xf32>) outs(%f : tensor<50x40xf32>) -> tensor<50x40xf32>
    gpu.yield %1 : tensor<50x40xf32>
  }) {block_tile = array<i64: 32, 16, 8>, thread_tile = array<i64: 4, 4, 8>} : () -> tensor<50x40xf32>
  %2 = linalg.generic {indexing_maps = [affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>, affine_map<(i, j) -> (i, j)>], iterator_types = ["parallel", "parallel"]} ins(%0, %m : tensor<50x40xf32>, tensor<50x40xi1>) outs(%e : tensor<50x40xf32>) {
  ^bb0(%x: f32, %keep: i1, %o: f32):
    %z = arith.constant 0.0 : f32
    %s = arith.select %keep, %x, %z : f32
    linalg.yield %s : f32
  } -> tensor<50x40xf32>
  return %2, %m : tensor<50x40xf32>, tensor<50x40xi1>
}
