// roller-fold-casts: the extf casts and transposes torch-mlir puts in front of a matmul are
// read through: one mixed-precision linalg.generic contraction on the f16 tensors.
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(roller-fold-casts)' | filecheck %s
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(roller-fold-casts,quartet-outline-tiles,roller-fuse)' | filecheck %s --check-prefix=FUSED

#map = affine_map<(d0) -> (d0)>
#map1 = affine_map<(d0, d1) -> (d0, d1)>
#map2 = affine_map<(d0, d1) -> (d1)>

// F.linear(x, w, b) on fp16 as torch-mlir imports it: w transposed, x, w^T and b cast to f32,
// an f32 matmul, the bias added, the result cast back.
// CHECK-DAG:   #[[A:.*]] = affine_map<(d0, d1, d2) -> (d0, d2)>
// CHECK-DAG:   #[[B:.*]] = affine_map<(d0, d1, d2) -> (d1, d2)>
// CHECK-DAG:   #[[C:.*]] = affine_map<(d0, d1, d2) -> (d0, d1)>
// CHECK-LABEL: func.func @linear
// CHECK-SAME:    (%[[X:.*]]: tensor<40x64xf16>, %[[W:.*]]: tensor<24x64xf16>, %[[BIAS:.*]]: tensor<24xf16>)
// CHECK-NOT:     linalg.transpose
// CHECK:         %[[F:.*]] = linalg.fill
// CHECK-NOT:     linalg.matmul
// CHECK:         %[[MM:.*]] = linalg.generic {indexing_maps = [#[[A]], #[[B]], #[[C]]], iterator_types = ["parallel", "parallel", "reduction"]} ins(%[[X]], %[[W]] : tensor<40x64xf16>, tensor<24x64xf16>) outs(%[[F]] : tensor<40x24xf32>)
// CHECK-NEXT:    ^bb0(%[[IA:.*]]: f16, %[[IB:.*]]: f16, %[[ACC:.*]]: f32):
// CHECK-NEXT:      %[[EA:.*]] = arith.extf %[[IA]] : f16 to f32
// CHECK-NEXT:      %[[EB:.*]] = arith.extf %[[IB]] : f16 to f32
// CHECK-NEXT:      %[[P:.*]] = arith.mulf %[[EA]], %[[EB]] : f32
// CHECK-NEXT:      %[[S:.*]] = arith.addf %[[ACC]], %[[P]] : f32
// CHECK-NEXT:      linalg.yield %[[S]] : f32
// The bias add reads the f16 bias and extends it in its body.
// CHECK:         linalg.generic {{.*}} ins(%[[MM]], %[[BIAS]] : tensor<40x24xf32>, tensor<24xf16>)
// CHECK-NEXT:    ^bb0(%{{.*}}: f32, %[[IN:.*]]: f16, %{{.*}}: f32):
// CHECK-NEXT:      arith.extf %[[IN]] : f16 to f32
// CHECK:         arith.truncf
// CHECK-NOT:     arith.extf
// CHECK:         return
// After outlining and roller-fuse the operator is one tile.
// FUSED-LABEL: func.func @linear
// FUSED:         "quartet.tile"
// FUSED-NOT:     "quartet.tile"
// FUSED:         return
func.func @linear(%arg0: tensor<40x64xf16>, %arg1: tensor<24x64xf16>, %arg2: tensor<24xf16>) -> tensor<40x24xf16> {
  %cst = arith.constant 0.000000e+00 : f32
  %0 = tensor.empty() : tensor<64x24xf16>
  %transposed = linalg.transpose ins(%arg1 : tensor<24x64xf16>) outs(%0 : tensor<64x24xf16>) permutation = [1, 0]
  %1 = tensor.empty() : tensor<24xf32>
  %2 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel"]} ins(%arg2 : tensor<24xf16>) outs(%1 : tensor<24xf32>) {
  ^bb0(%in: f16, %out: f32):
    %13 = arith.extf %in : f16 to f32
    linalg.yield %13 : f32
  } -> tensor<24xf32>
  %3 = tensor.empty() : tensor<40x64xf32>
  %4 = linalg.generic {indexing_maps = [#map1, #map1], iterator_types = ["parallel", "parallel"]} ins(%arg0 : tensor<40x64xf16>) outs(%3 : tensor<40x64xf32>) {
  ^bb0(%in: f16, %out: f32):
    %13 = arith.extf %in : f16 to f32
    linalg.yield %13 : f32
  } -> tensor<40x64xf32>
  %5 = tensor.empty() : tensor<64x24xf32>
  %6 = linalg.generic {indexing_maps = [#map1, #map1], iterator_types = ["parallel", "parallel"]} ins(%transposed : tensor<64x24xf16>) outs(%5 : tensor<64x24xf32>) {
  ^bb0(%in: f16, %out: f32):
    %13 = arith.extf %in : f16 to f32
    linalg.yield %13 : f32
  } -> tensor<64x24xf32>
  %7 = tensor.empty() : tensor<40x24xf32>
  %8 = linalg.fill ins(%cst : f32) outs(%7 : tensor<40x24xf32>) -> tensor<40x24xf32>
  %9 = linalg.matmul ins(%4, %6 : tensor<40x64xf32>, tensor<64x24xf32>) outs(%8 : tensor<40x24xf32>) -> tensor<40x24xf32>
  %10 = linalg.generic {indexing_maps = [#map1, #map2, #map1], iterator_types = ["parallel", "parallel"]} ins(%9, %2 : tensor<40x24xf32>, tensor<24xf32>) outs(%7 : tensor<40x24xf32>) {
  ^bb0(%in: f32, %in_3: f32, %out: f32):
    %13 = arith.addf %in, %in_3 : f32
    linalg.yield %13 : f32
  } -> tensor<40x24xf32>
  %11 = tensor.empty() : tensor<40x24xf16>
  %12 = linalg.generic {indexing_maps = [#map1, #map1], iterator_types = ["parallel", "parallel"]} ins(%10 : tensor<40x24xf32>) outs(%11 : tensor<40x24xf16>) {
  ^bb0(%in: f32, %out: f16):
    %13 = arith.truncf %in : f32 to f16
    linalg.yield %13 : f16
  } -> tensor<40x24xf16>
  return %12 : tensor<40x24xf16>
}

// -----

// q @ k.transpose(-1, -2) on [batch, heads, tokens, head_dim] f16: the transpose of k goes, the
// collapse to 3-D is rebuilt on k itself and read transposed.
// CHECK-DAG:   #[[QA:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>
// CHECK-DAG:   #[[QB:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d2, d3)>
// CHECK-DAG:   #[[QC:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>
// CHECK-LABEL: func.func @scores
// CHECK-SAME:    (%[[Q:.*]]: tensor<2x4x16x8xf16>, %[[K:.*]]: tensor<2x4x16x8xf16>)
// CHECK-NOT:     linalg.transpose
// CHECK:         %[[CQ:.*]] = tensor.collapse_shape %[[Q]] {{\[}}[0, 1], [2], [3]] : tensor<2x4x16x8xf16> into tensor<8x16x8xf16>
// CHECK:         %[[CK:.*]] = tensor.collapse_shape %[[K]] {{\[}}[0, 1], [2], [3]] : tensor<2x4x16x8xf16> into tensor<8x16x8xf16>
// CHECK-NOT:     linalg.batch_matmul
// CHECK:         linalg.generic {indexing_maps = [#[[QA]], #[[QB]], #[[QC]]], iterator_types = ["parallel", "parallel", "parallel", "reduction"]} ins(%[[CQ]], %[[CK]] : tensor<8x16x8xf16>, tensor<8x16x8xf16>)
// CHECK-NOT:     linalg.transpose
// CHECK:         return
#map = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
func.func @scores(%arg0: tensor<2x4x16x8xf16>, %arg1: tensor<2x4x16x8xf16>) -> tensor<8x16x16xf32> {
  %cst = arith.constant 0.000000e+00 : f32
  %0 = tensor.empty() : tensor<2x4x8x16xf16>
  %transposed = linalg.transpose ins(%arg1 : tensor<2x4x16x8xf16>) outs(%0 : tensor<2x4x8x16xf16>) permutation = [0, 1, 3, 2]
  %collapsed = tensor.collapse_shape %arg0 [[0, 1], [2], [3]] : tensor<2x4x16x8xf16> into tensor<8x16x8xf16>
  %collapsed_0 = tensor.collapse_shape %transposed [[0, 1], [2], [3]] : tensor<2x4x8x16xf16> into tensor<8x8x16xf16>
  %1 = tensor.empty() : tensor<8x16x16xf32>
  %2 = linalg.fill ins(%cst : f32) outs(%1 : tensor<8x16x16xf32>) -> tensor<8x16x16xf32>
  %3 = linalg.batch_matmul ins(%collapsed, %collapsed_0 : tensor<8x16x8xf16>, tensor<8x8x16xf16>) outs(%2 : tensor<8x16x16xf32>) -> tensor<8x16x16xf32>
  return %3 : tensor<8x16x16xf32>
}

// -----

// A cast that something else also reads stays for that reader; the matmul reads x directly.
// CHECK-LABEL: func.func @shared_cast
// CHECK-SAME:    (%[[X:.*]]: tensor<8x16xf16>, %[[W:.*]]: tensor<16x4xf32>)
// CHECK:         %[[XC:.*]] = linalg.generic {{.*}} ins(%[[X]] : tensor<8x16xf16>) outs(%{{.*}} : tensor<8x16xf32>)
// CHECK:         %[[MM:.*]] = linalg.generic {{.*}} ins(%[[X]], %[[W]] : tensor<8x16xf16>, tensor<16x4xf32>)
// CHECK-NEXT:    ^bb0(%[[IA:.*]]: f16, %[[IB:.*]]: f32, %[[ACC:.*]]: f32):
// CHECK-NEXT:      %[[EA:.*]] = arith.extf %[[IA]] : f16 to f32
// CHECK-NEXT:      arith.mulf %[[EA]], %[[IB]] : f32
// CHECK:         return %[[MM]], %[[XC]]
#id = affine_map<(d0, d1) -> (d0, d1)>
func.func @shared_cast(%x: tensor<8x16xf16>, %w: tensor<16x4xf32>) -> (tensor<8x4xf32>, tensor<8x16xf32>) {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<8x16xf32>
  %xc = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]} ins(%x : tensor<8x16xf16>) outs(%e : tensor<8x16xf32>) {
  ^bb0(%in: f16, %out: f32):
    %c = arith.extf %in : f16 to f32
    linalg.yield %c : f32
  } -> tensor<8x16xf32>
  %o = tensor.empty() : tensor<8x4xf32>
  %f = linalg.fill ins(%zero : f32) outs(%o : tensor<8x4xf32>) -> tensor<8x4xf32>
  %m = linalg.matmul ins(%xc, %w : tensor<8x16xf32>, tensor<16x4xf32>) outs(%f : tensor<8x4xf32>) -> tensor<8x4xf32>
  return %m, %xc : tensor<8x4xf32>, tensor<8x16xf32>
}

// -----

// Left unchanged: a matmul into an f16 accumulator (the named op truncates its f32 inputs, so
// reading the f16 source would not be the same computation), and a matmul already in a tile.
// CHECK-LABEL: func.func @truncating
// CHECK:         linalg.generic
// CHECK:         arith.extf
// CHECK:         linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<8x16xf32>, tensor<16x4xf32>) outs(%{{.*}} : tensor<8x4xf16>)
#id = affine_map<(d0, d1) -> (d0, d1)>
func.func @truncating(%x: tensor<8x16xf16>, %w: tensor<16x4xf32>) -> tensor<8x4xf16> {
  %zero = arith.constant 0.0 : f16
  %e = tensor.empty() : tensor<8x16xf32>
  %xc = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]} ins(%x : tensor<8x16xf16>) outs(%e : tensor<8x16xf32>) {
  ^bb0(%in: f16, %out: f32):
    %c = arith.extf %in : f16 to f32
    linalg.yield %c : f32
  } -> tensor<8x16xf32>
  %o = tensor.empty() : tensor<8x4xf16>
  %f = linalg.fill ins(%zero : f16) outs(%o : tensor<8x4xf16>) -> tensor<8x4xf16>
  %m = linalg.matmul ins(%xc, %w : tensor<8x16xf32>, tensor<16x4xf32>) outs(%f : tensor<8x4xf16>) -> tensor<8x4xf16>
  return %m : tensor<8x4xf16>
}

// -----

// CHECK-LABEL: func.func @in_tile
// CHECK:         linalg.transpose
// CHECK:         "quartet.tile"
// CHECK-NEXT:      linalg.matmul
func.func @in_tile(%a: tensor<8x16xf32>, %b: tensor<4x16xf32>, %f: tensor<8x4xf32>) -> tensor<8x4xf32> {
  %e = tensor.empty() : tensor<16x4xf32>
  %t = linalg.transpose ins(%b : tensor<4x16xf32>) outs(%e : tensor<16x4xf32>) permutation = [1, 0]
  %r = "quartet.tile"() ({
    %m = linalg.matmul ins(%a, %t : tensor<8x16xf32>, tensor<16x4xf32>) outs(%f : tensor<8x4xf32>) -> tensor<8x4xf32>
    gpu.yield %m : tensor<8x4xf32>
  }) : () -> tensor<8x4xf32>
  return %r : tensor<8x4xf32>
}
