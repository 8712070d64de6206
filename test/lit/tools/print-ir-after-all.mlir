// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-outline-tiles,canonicalize)' --mlir-print-ir-after-all 2>&1 >/dev/null | %filecheck %s
// CHECK: IR Dump After {{.*}}quartet-outline-tiles
// CHECK: "quartet.tile"
// CHECK: IR Dump After Canonicalizer
// CHECK: "quartet.tile"

// RUN: quartet-opt %s --mlir-print-op-generic | %filecheck %s --check-prefix=GENERIC
// GENERIC: "func.func"()
// GENERIC: "linalg.exp"

func.func @f(%a: tensor<4xf32>, %o: tensor<4xf32>) -> tensor<4xf32> {
  %0 = linalg.exp ins(%a : tensor<4xf32>) outs(%o : tensor<4xf32>) -> tensor<4xf32>
  return %0 : tensor<4xf32>
}
