// roller-fuse: the linalg ops torch-mlir makes of one operator, outlined one tile each, merge
// back into one tile per operator when one lowering takes the merged tile as one kernel.
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(quartet-outline-tiles,roller-fuse)' | filecheck %s
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(quartet-outline-tiles,roller-fuse{target=gfx942})' | filecheck %s --check-prefix=GFX
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(quartet-outline-tiles,roller-fuse,roller-config{target=sm_90})' | filecheck %s --check-prefix=CONFIG

#map = affine_map<(d0, d1) -> (d0, d1)>
#map1 = affine_map<(d0, d1) -> (d0)>
#map2 = affine_map<(d0, d1) -> (d0, 0)>

// Softmax on fp16 as torch-mlir imports it: cast, max, subtract, exp, sum, divide, cast back,
// with three fills and a reshape: eleven linalg ops, one row program.
// CHECK-LABEL: func.func @softmax
// CHECK:         %[[T:.*]] = "quartet.tile"() ({
// CHECK-COUNT-3:   linalg.fill
// CHECK:           tensor.expand_shape
// CHECK:           math.exp
// CHECK:           arith.divf
// CHECK:           arith.truncf
// CHECK:           gpu.yield
// CHECK-NEXT:    }) {edge_levels = array<i64: 2, 2, 2, 2, 2, 2, 2, 2, 2>} : () -> tensor<8x64xf16>
// CHECK-NEXT:    return %[[T]]
// CHECK-NOT:     quartet.tile
// The row policy keeps whole rows per block: 4 threads per row of 8 vectors, 2 vectors each,
// 8 rows of one warp.
// CONFIG-LABEL: func.func @softmax
// CONFIG:         block_tile = array<i64: 8, 64>, {{.*}} thread_tile = array<i64: 1, 16>, threads = 32 : i64
func.func @softmax(%arg0: tensor<8x64xf16>) -> tensor<8x64xf16> {
  %c0_i64 = arith.constant 0 : i64
  %cst = arith.constant 0xFF800000 : f32
  %cst_0 = arith.constant 0.000000e+00 : f32
  %0 = tensor.empty() : tensor<8x64xf32>
  %1 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%arg0 : tensor<8x64xf16>) outs(%0 : tensor<8x64xf32>) {
  ^bb0(%in: f16, %out: f32):
    %15 = arith.extf %in : f16 to f32
    linalg.yield %15 : f32
  } -> tensor<8x64xf32>
  %2 = tensor.empty() : tensor<8xi64>
  %3 = linalg.fill ins(%c0_i64 : i64) outs(%2 : tensor<8xi64>) -> tensor<8xi64>
  %4 = tensor.empty() : tensor<8xf32>
  %5 = linalg.fill ins(%cst : f32) outs(%4 : tensor<8xf32>) -> tensor<8xf32>
  %6:2 = linalg.generic {indexing_maps = [#map, #map1, #map1], iterator_types = ["parallel", "reduction"]} ins(%1 : tensor<8x64xf32>) outs(%5, %3 : tensor<8xf32>, tensor<8xi64>) {
  ^bb0(%in: f32, %out: f32, %out_1: i64):
    %15 = linalg.index 1 : index
    %16 = arith.index_cast %15 : index to i64
    %17 = arith.maximumf %in, %out : f32
    %18 = arith.cmpf ogt, %in, %out : f32
    %19 = arith.select %18, %16, %out_1 : i64
    linalg.yield %17, %19 : f32, i64
  } -> (tensor<8xf32>, tensor<8xi64>)
  %expanded = tensor.expand_shape %6#0 [[0, 1]] output_shape [8, 1] : tensor<8xf32> into tensor<8x1xf32>
  %7 = linalg.generic {indexing_maps = [#map, #map2, #map], iterator_types = ["parallel", "parallel"]} ins(%1, %expanded : tensor<8x64xf32>, tensor<8x1xf32>) outs(%0 : tensor<8x64xf32>) {
  ^bb0(%in: f32, %in_1: f32, %out: f32):
    %15 = arith.subf %in, %in_1 : f32
    linalg.yield %15 : f32
  } -> tensor<8x64xf32>
  %8 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%7 : tensor<8x64xf32>) outs(%0 : tensor<8x64xf32>) {
  ^bb0(%in: f32, %out: f32):
    %15 = math.exp %in : f32
    linalg.yield %15 : f32
  } -> tensor<8x64xf32>
  %9 = tensor.empty() : tensor<8x1xf32>
  %10 = linalg.fill ins(%cst_0 : f32) outs(%9 : tensor<8x1xf32>) -> tensor<8x1xf32>
  %11 = linalg.generic {indexing_maps = [#map, #map2], iterator_types = ["parallel", "reduction"]} ins(%8 : tensor<8x64xf32>) outs(%10 : tensor<8x1xf32>) {
  ^bb0(%in: f32, %out: f32):
    %15 = arith.addf %in, %out : f32
    linalg.yield %15 : f32
  } -> tensor<8x1xf32>
  %12 = linalg.generic {indexing_maps = [#map, #map2, #map], iterator_types = ["parallel", "parallel"]} ins(%8, %11 : tensor<8x64xf32>, tensor<8x1xf32>) outs(%0 : tensor<8x64xf32>) {
  ^bb0(%in: f32, %in_1: f32, %out: f32):
    %15 = arith.divf %in, %in_1 : f32
    linalg.yield %15 : f32
  } -> tensor<8x64xf32>
  %13 = tensor.empty() : tensor<8x64xf16>
  %14 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%12 : tensor<8x64xf32>) outs(%13 : tensor<8x64xf16>) {
  ^bb0(%in: f32, %out: f16):
    %15 = arith.truncf %in : f32 to f16
    linalg.yield %15 : f16
  } -> tensor<8x64xf16>
  return %14 : tensor<8x64xf16>
}

// -----

#map = affine_map<(d0, d1) -> (d0, d1)>

// A fp16 matrix product: the fill of the f32 accumulator, the matmul and the cast to f16 form
// one GEMM tile whose root is the matmul (the op with the most loops). On gfx942, which has no
// GEMM lowering, the three stay apart (the SIMT builders take them one by one).
// CHECK-LABEL: func.func @matmul_f16
// CHECK:         "quartet.tile"() ({
// CHECK:           linalg.fill
// CHECK-NEXT:      linalg.matmul
// CHECK-NEXT:      linalg.generic
// CHECK:           arith.truncf
// CHECK:         }) {edge_levels = array<i64: 2, 2>} : () -> tensor<32x16xf16>
// CHECK-NOT:     quartet.tile
// GFX-LABEL: func.func @matmul_f16
// GFX-COUNT-3:   "quartet.tile"
// CONFIG-LABEL: func.func @matmul_f16
// CONFIG:         block_tile = array<i64: {{[0-9]+}}, {{[0-9]+}}, {{[0-9]+}}>
func.func @matmul_f16(%a: tensor<32x64xf16>, %b: tensor<64x16xf16>) -> tensor<32x16xf16> {
  %cst = arith.constant 0.000000e+00 : f32
  %0 = tensor.empty() : tensor<32x16xf32>
  %1 = linalg.fill ins(%cst : f32) outs(%0 : tensor<32x16xf32>) -> tensor<32x16xf32>
  %2 = linalg.matmul ins(%a, %b : tensor<32x64xf16>, tensor<64x16xf16>) outs(%1 : tensor<32x16xf32>) -> tensor<32x16xf32>
  %3 = tensor.empty() : tensor<32x16xf16>
  %4 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%2 : tensor<32x16xf32>) outs(%3 : tensor<32x16xf16>) {
  ^bb0(%in: f32, %out: f16):
    %5 = arith.truncf %in : f32 to f16
    linalg.yield %5 : f16
  } -> tensor<32x16xf16>
  return %4 : tensor<32x16xf16>
}

// -----

#map = affine_map<(d0, d1) -> (d0, d1)>

// What does not merge: a matrix product whose result is also returned (the intermediate must
// reach memory anyway) keeps its own tile; a second matrix product is another iteration space
// (Welder's fusion, not an operator). The relu joins the first product, which it alone reads.
// CHECK-LABEL: func.func @no_merge
// CHECK:         %[[M:.*]] = "quartet.tile"() ({
// CHECK:           linalg.matmul
// CHECK:           arith.maximumf
// CHECK:         %[[N:.*]] = "quartet.tile"() ({
// CHECK-NEXT:      linalg.matmul
// CHECK-NEXT:      gpu.yield
// CHECK:         %[[E:.*]] = "quartet.tile"() ({
// CHECK-NEXT:      linalg.generic
// CHECK:           arith.addf
// CHECK:         return %[[N]], %[[E]]
func.func @no_merge(%a: tensor<16x16xf32>, %b: tensor<16x16xf32>, %c: tensor<16x16xf32>) -> (tensor<16x16xf32>, tensor<16x16xf32>) {
  %z = arith.constant 0.000000e+00 : f32
  %0 = linalg.matmul ins(%a, %b : tensor<16x16xf32>, tensor<16x16xf32>) outs(%c : tensor<16x16xf32>) -> tensor<16x16xf32>
  %1 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%0 : tensor<16x16xf32>) outs(%c : tensor<16x16xf32>) {
  ^bb0(%in: f32, %out: f32):
    %r = arith.maximumf %in, %z : f32
    linalg.yield %r : f32
  } -> tensor<16x16xf32>
  %2 = linalg.matmul ins(%1, %b : tensor<16x16xf32>, tensor<16x16xf32>) outs(%c : tensor<16x16xf32>) -> tensor<16x16xf32>
  %3 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%2 : tensor<16x16xf32>) outs(%c : tensor<16x16xf32>) {
  ^bb0(%in: f32, %out: f32):
    %r = arith.addf %in, %in : f32
    linalg.yield %r : f32
  } -> tensor<16x16xf32>
  return %2, %3 : tensor<16x16xf32>, tensor<16x16xf32>
}

// -----

// One fill shared by two GEMMs (torch-mlir makes one per output shape): each GEMM gets its own
// copy, and the fill's own tile disappears once nothing reads it.
// CHECK-LABEL: func.func @shared_fill
// CHECK:         "quartet.tile"() ({
// CHECK-NEXT:      linalg.fill
// CHECK-NEXT:      linalg.matmul
// CHECK:         "quartet.tile"() ({
// CHECK-NEXT:      linalg.fill
// CHECK-NEXT:      linalg.matmul
// CHECK-NOT:     quartet.tile
func.func @shared_fill(%a: tensor<16x16xf32>, %b: tensor<16x16xf32>, %c: tensor<16x16xf32>) -> (tensor<16x16xf32>, tensor<16x16xf32>) {
  %z = arith.constant 0.000000e+00 : f32
  %e = tensor.empty() : tensor<16x16xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<16x16xf32>) -> tensor<16x16xf32>
  %0 = linalg.matmul ins(%a, %b : tensor<16x16xf32>, tensor<16x16xf32>) outs(%f : tensor<16x16xf32>) -> tensor<16x16xf32>
  %1 = linalg.matmul ins(%a, %c : tensor<16x16xf32>, tensor<16x16xf32>) outs(%f : tensor<16x16xf32>) -> tensor<16x16xf32>
  return %0, %1 : tensor<16x16xf32>, tensor<16x16xf32>
}
