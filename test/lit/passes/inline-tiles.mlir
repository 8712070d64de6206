// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-inline-tiles)' | %filecheck %s

// The schedule attributes are dropped with the tile; the computation is unchanged.
// CHECK-LABEL: func.func @configured
// CHECK-NOT:     quartet.tile
// CHECK:         %[[M:.*]] = linalg.matmul ins(%arg0, %arg1 : tensor<64x32xf32>, tensor<32x64xf32>) outs(%arg2 : tensor<64x64xf32>)
// CHECK-NEXT:    %[[E:.*]] = linalg.exp ins(%[[M]] : tensor<64x64xf32>)
// CHECK-NEXT:    return %[[E]]
func.func @configured(%a: tensor<64x32xf32>, %b: tensor<32x64xf32>, %c: tensor<64x64xf32>) -> tensor<64x64xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<64x32xf32>, tensor<32x64xf32>) outs(%c : tensor<64x64xf32>) -> tensor<64x64xf32>
    gpu.yield %1 : tensor<64x64xf32>
  }) {block_tile = array<i64: 32, 32, 16>, thread_tile = array<i64: 4, 4, 16>, threads = 64 : i64} : () -> tensor<64x64xf32>
  %2 = "quartet.tile"() ({
    %3 = linalg.exp ins(%0 : tensor<64x64xf32>) outs(%c : tensor<64x64xf32>) -> tensor<64x64xf32>
    gpu.yield %3 : tensor<64x64xf32>
  }) : () -> tensor<64x64xf32>
  return %2 : tensor<64x64xf32>
}
