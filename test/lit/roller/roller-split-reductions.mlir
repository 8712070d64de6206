// roller-split-reductions: a column sum over 64 fp16 columns would be one block of the colreduce
// family (8 x 8 columns a block) streaming 2 MB alone; it becomes partial sums over 256 blocks of
// rows (read through an expand_shape view, accumulated in f32) and the sum of those partials.
// A column reduction whose grid already covers the chip, and any reduction on the CPU, stay.
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(roller-split-reductions{target=sm_90})' | filecheck %s
// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(roller-split-reductions{target=cpu})' | filecheck %s --check-prefix=CPU

// CHECK-LABEL: func.func @narrow_column_sum
// CHECK-DAG:     %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
// CHECK-DAG:     %[[VIEW:.*]] = tensor.expand_shape %{{.*}} {{\[}}[0, 1], [2]] output_shape [256, 64, 64] : tensor<16384x64xf16> into tensor<256x64x64xf16>
// CHECK:         %[[PART:.*]] = "quartet.tile"() ({
// CHECK:           linalg.fill ins(%[[ZERO]] : f32) outs(%{{.*}} : tensor<256x64xf32>)
// CHECK:           linalg.generic {{.*}} iterator_types = ["parallel", "reduction", "parallel"]} ins(%[[VIEW]] : tensor<256x64x64xf16>)
// CHECK:             arith.extf
// CHECK:             arith.addf %{{.*}}, %{{.*}} : f32
// CHECK:         }) : () -> tensor<256x64xf32>
// CHECK:         %[[SUM:.*]] = "quartet.tile"() ({
// CHECK:           linalg.generic {{.*}} iterator_types = ["reduction", "parallel"]} ins(%[[PART]] : tensor<256x64xf32>) outs(%{{.*}} : tensor<64xf16>)
// CHECK:         }) : () -> tensor<64xf16>
// CHECK:         return %[[SUM]]
// CPU-LABEL: func.func @narrow_column_sum
// CPU-NOT:     tensor.expand_shape
// CPU-COUNT-1: "quartet.tile"
func.func @narrow_column_sum(%x: tensor<16384x64xf16>) -> tensor<64xf16> {
  %zero = arith.constant 0.000000e+00 : f16
  %r = "quartet.tile"() ({
    %e = tensor.empty() : tensor<64xf16>
    %f = linalg.fill ins(%zero : f16) outs(%e : tensor<64xf16>) -> tensor<64xf16>
    %s = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d1)>],
                         iterator_types = ["reduction", "parallel"]}
        ins(%x : tensor<16384x64xf16>) outs(%f : tensor<64xf16>) {
    ^bb0(%in: f16, %out: f16):
      %a = arith.addf %in, %out : f16
      linalg.yield %a : f16
    } -> tensor<64xf16>
    gpu.yield %s : tensor<64xf16>
  }) : () -> tensor<64xf16>
  return %r : tensor<64xf16>
}

// -----

// CHECK-LABEL: func.func @wide_column_sum
// CHECK-NOT:     tensor.expand_shape
// CHECK-COUNT-1: "quartet.tile"
func.func @wide_column_sum(%x: tensor<4096x4096xf32>) -> tensor<4096xf32> {
  %zero = arith.constant 0.000000e+00 : f32
  %r = "quartet.tile"() ({
    %e = tensor.empty() : tensor<4096xf32>
    %f = linalg.fill ins(%zero : f32) outs(%e : tensor<4096xf32>) -> tensor<4096xf32>
    %s = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d1)>],
                         iterator_types = ["reduction", "parallel"]}
        ins(%x : tensor<4096x4096xf32>) outs(%f : tensor<4096xf32>) {
    ^bb0(%in: f32, %out: f32):
      %a = arith.addf %in, %out : f32
      linalg.yield %a : f32
    } -> tensor<4096xf32>
    gpu.yield %s : tensor<4096xf32>
  }) : () -> tensor<4096xf32>
  return %r : tensor<4096xf32>
}
