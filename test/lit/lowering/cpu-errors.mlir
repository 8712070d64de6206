// RUN: not quartet-opt %s --split-input-file --pass-pipeline='builtin.module(quartet-lower-cpu)' 2>&1 | %filecheck %s

// What the CPU target does not lower is refused by name, with its location; never miscompiled.

// CHECK: cpu-errors.mlir:[[# @LINE + 2]]:8: error: operation 'tensor.gather' is not supported by the CPU target
func.func @gather(%x: tensor<8xf32>, %i: tensor<2x1xindex>) -> tensor<2xf32> {
  %g = tensor.gather %x[%i] gather_dims([0]) unique : (tensor<8xf32>, tensor<2x1xindex>) -> tensor<2xf32>
  return %g : tensor<2xf32>
}

// -----

// CHECK: cpu-errors.mlir:[[# @LINE + 2]]:8: error: operation 'arith.addf' on tensors is not supported by the CPU target
func.func @tensor_arith(%x: tensor<4xf32>) -> tensor<4xf32> {
  %y = arith.addf %x, %x : tensor<4xf32>
  return %y : tensor<4xf32>
}

// -----

// CHECK: cpu-errors.mlir:[[# @LINE + 1]]:1: error: element type 'f8E4M3FN' in the signature of '@fp8' is not supported by the CPU target (supported: f16, bf16, f32, f64, i1, i8, i16, i32, i64)
func.func @fp8(%x: tensor<4xf8E4M3FN>, %o: tensor<4xf8E4M3FN>) -> tensor<4xf8E4M3FN> {
  %y = linalg.copy ins(%x : tensor<4xf8E4M3FN>) outs(%o : tensor<4xf8E4M3FN>) -> tensor<4xf8E4M3FN>
  return %y : tensor<4xf8E4M3FN>
}

// -----

// -----

// A value of an unsupported type inside a function (the signature is fine).
// CHECK: cpu-errors.mlir:[[# @LINE + 3]]:8: error: element type 'f8E4M3FN' in operation 'tensor.empty' is not supported by the CPU target
func.func @fp8_inside(%x: tensor<4xf32>) -> tensor<4xf32> {
  %c = arith.constant 0 : index
  %e = tensor.empty() : tensor<4xf8E4M3FN>
  return %x : tensor<4xf32>
}

// -----

// CHECK: cpu-errors.mlir:[[# @LINE + 1]]:1: error: argument 0 of '@dynamic' has dynamic shape 'tensor<?xf32>'; the CPU entry needs static shapes
func.func @dynamic(%x: tensor<?xf32>) -> tensor<?xf32> {
  return %x : tensor<?xf32>
}
