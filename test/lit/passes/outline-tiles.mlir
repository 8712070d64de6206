// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(quartet-outline-tiles)' | %filecheck %s
// Outline then inline gives back the input:
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(quartet-outline-tiles,quartet-inline-tiles)' > %t.roundtrip
// RUN: quartet-opt %s --split-input-file > %t.input
// RUN: diff %t.input %t.roundtrip

// Every linalg op gets its own tile; users read the tile's result.
// CHECK-LABEL: func.func @matmul_relu
// CHECK:         %[[FILL:.*]] = "quartet.tile"() ({
// CHECK-NEXT:      %[[F:.*]] = linalg.fill
// CHECK-NEXT:      gpu.yield %[[F]] : tensor<16x32xf32>
// CHECK-NEXT:    }) : () -> tensor<16x32xf32>
// CHECK:         %[[MM:.*]] = "quartet.tile"() ({
// CHECK-NEXT:      %[[M:.*]] = linalg.matmul ins(%arg0, %arg1 : tensor<16x8xf32>, tensor<8x32xf32>) outs(%[[FILL]] : tensor<16x32xf32>)
// CHECK-NEXT:      gpu.yield %[[M]] : tensor<16x32xf32>
// CHECK-NEXT:    }) : () -> tensor<16x32xf32>
// CHECK:         %[[RELU:.*]] = "quartet.tile"() ({
// CHECK-NEXT:      %[[G:.*]] = linalg.generic {{.*}} ins(%[[MM]] : tensor<16x32xf32>)
// CHECK:           gpu.yield %[[G]] : tensor<16x32xf32>
// CHECK-NEXT:    }) : () -> tensor<16x32xf32>
// CHECK-NEXT:    return %[[RELU]]
func.func @matmul_relu(%a: tensor<16x8xf32>, %b: tensor<8x32xf32>) -> tensor<16x32xf32> {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<16x32xf32>
  %c = linalg.fill ins(%zero : f32) outs(%e : tensor<16x32xf32>) -> tensor<16x32xf32>
  %m = linalg.matmul ins(%a, %b : tensor<16x8xf32>, tensor<8x32xf32>) outs(%c : tensor<16x32xf32>) -> tensor<16x32xf32>
  %r = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0, d1)>],
                       iterator_types = ["parallel", "parallel"]} ins(%m : tensor<16x32xf32>) outs(%e : tensor<16x32xf32>) {
  ^bb0(%in: f32, %out: f32):
    %v = arith.maximumf %in, %zero : f32
    linalg.yield %v : f32
  } -> tensor<16x32xf32>
  return %r : tensor<16x32xf32>
}

// -----

// Linalg ops inside structured control flow are outlined where they stand.
// CHECK-LABEL: func.func @in_loop
// CHECK:         scf.for
// CHECK:           %[[T:.*]] = "quartet.tile"() ({
// CHECK-NEXT:        linalg.add
// CHECK-NEXT:        gpu.yield
// CHECK:           scf.yield %[[T]]
// CHECK:         scf.if
// CHECK:           "quartet.tile"() ({
// CHECK-NEXT:        linalg.conv_2d_nchw_fchw
func.func @in_loop(%x: tensor<8xf32>, %n: index, %p: i1, %img: tensor<1x3x8x8xf32>, %w: tensor<4x3x3x3xf32>, %o: tensor<1x4x6x6xf32>) -> (tensor<8xf32>, tensor<1x4x6x6xf32>) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %r = scf.for %i = %c0 to %n step %c1 iter_args(%acc = %x) -> (tensor<8xf32>) {
    %s = linalg.add ins(%acc, %x : tensor<8xf32>, tensor<8xf32>) outs(%acc : tensor<8xf32>) -> tensor<8xf32>
    scf.yield %s : tensor<8xf32>
  }
  %c = scf.if %p -> (tensor<1x4x6x6xf32>) {
    %v = linalg.conv_2d_nchw_fchw ins(%img, %w : tensor<1x3x8x8xf32>, tensor<4x3x3x3xf32>) outs(%o : tensor<1x4x6x6xf32>) -> tensor<1x4x6x6xf32>
    scf.yield %v : tensor<1x4x6x6xf32>
  } else {
    scf.yield %o : tensor<1x4x6x6xf32>
  }
  return %r, %c : tensor<8xf32>, tensor<1x4x6x6xf32>
}
