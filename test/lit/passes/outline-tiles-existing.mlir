// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-outline-tiles)' | %filecheck %s

// Ops already in a tile are left alone.
// CHECK-LABEL: func.func @already
// CHECK-COUNT-1: "quartet.tile"
// CHECK-NOT:     "quartet.tile"
func.func @already(%a: tensor<4xf32>, %o: tensor<4xf32>) -> tensor<4xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.exp ins(%a : tensor<4xf32>) outs(%o : tensor<4xf32>) -> tensor<4xf32>
    gpu.yield %1 : tensor<4xf32>
  }) : () -> tensor<4xf32>
  return %0 : tensor<4xf32>
}
