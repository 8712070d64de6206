// Host control flow around tiles: the predicate of scf.if is a 0-d boolean computed by a tile
// (a reduction of every loop: a one-thread kernel), booleans become bytes, each branch launches
// its own kernels, and a strided tensor.extract_slice becomes a gather kernel.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-lower-gpu{target=sm_90})' | %filecheck %s

#id = affine_map<(d0, d1) -> (d0, d1)>
#all = affine_map<(d0, d1) -> ()>
#scalar = affine_map<() -> ()>
func.func @skip(%x: tensor<4x64xf32>) -> tensor<4x32xf32> {
  %zero = arith.constant 0.0 : f32
  %s = "quartet.tile"() ({
    %e = tensor.empty() : tensor<f32>
    %f = linalg.fill ins(%zero : f32) outs(%e : tensor<f32>) -> tensor<f32>
    %r = linalg.generic {indexing_maps = [#id, #all], iterator_types = ["reduction", "reduction"]}
        ins(%x : tensor<4x64xf32>) outs(%f : tensor<f32>) {
      ^bb0(%a: f32, %o: f32):
        %0 = arith.addf %a, %o : f32
        linalg.yield %0 : f32
    } -> tensor<f32>
    gpu.yield %r : tensor<f32>
  }) : () -> tensor<f32>
  %p = "quartet.tile"() ({
    %e = tensor.empty() : tensor<i1>
    %r = linalg.generic {indexing_maps = [#scalar, #scalar], iterator_types = []}
        ins(%s : tensor<f32>) outs(%e : tensor<i1>) {
      ^bb0(%a: f32, %o: i1):
        %0 = arith.cmpf ogt, %a, %zero : f32
        linalg.yield %0 : i1
    } -> tensor<i1>
    gpu.yield %r : tensor<i1>
  }) : () -> tensor<i1>
  %c = tensor.extract %p[] : tensor<i1>
  %y = scf.if %c -> (tensor<4x64xf32>) {
    %t = "quartet.tile"() ({
      %e = tensor.empty() : tensor<4x64xf32>
      %r = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]}
          ins(%x : tensor<4x64xf32>) outs(%e : tensor<4x64xf32>) {
        ^bb0(%a: f32, %o: f32):
          %0 = math.exp %a : f32
          linalg.yield %0 : f32
      } -> tensor<4x64xf32>
      gpu.yield %r : tensor<4x64xf32>
    }) : () -> tensor<4x64xf32>
    scf.yield %t : tensor<4x64xf32>
  } else {
    scf.yield %x : tensor<4x64xf32>
  }
  %h = tensor.extract_slice %y[0, 32] [4, 32] [1, 1] : tensor<4x64xf32> to tensor<4x32xf32>
  return %h : tensor<4x32xf32>
}

// CHECK-LABEL: func.func @skip
// CHECK: gpu.launch_func @q0_kernel::@q0_kernel blocks in (%{{.*}}, %{{.*}}, %{{.*}}) threads in (%{{.*}}, %{{.*}}, %{{.*}})
// CHECK: gpu.launch_func @q1_kernel::@q1_kernel
// CHECK-SAME: memref<i8>
// CHECK: %[[B:.*]] = tensor.extract %{{.*}}[] : tensor<i8>
// CHECK: %[[P:.*]] = arith.trunci %[[B]] : i8 to i1
// CHECK: scf.if %[[P]] -> (tensor<4x64xf32>) {
// CHECK: gpu.launch_func @q2_kernel::@q2_kernel
// CHECK: } else {
// CHECK-NEXT: scf.yield %{{.*}} : tensor<4x64xf32>
// CHECK: gpu.launch_func @q3_kernel::@q3_kernel
// CHECK-SAME: memref<4x32xf32>
// CHECK: gpu.binary @q0_kernel
// CHECK: gpu.binary @q3_kernel
