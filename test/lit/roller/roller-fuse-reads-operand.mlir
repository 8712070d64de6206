// roller-fuse's analyses print each linalg op alone in a scratch function. A body that reads one
// of the op's own operands from above (torch.flip: `tensor.extract %arg0` inside the generic
// whose input is %arg0) must read the scratch function's argument, not a value of the original
// function: that printed as an unknown SSA name and failed to parse ("expected ')' to end
// operand list", issue 18: flip, fliplr, flipud, rot90).
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-outline-tiles,roller-fuse{target=cpu},roller-config{target=cpu})' | filecheck %s

#map = affine_map<(d0, d1) -> (d0, d1)>
// CHECK-LABEL: func.func @flip
// CHECK:         "quartet.tile"() ({
// CHECK:           linalg.fill
// CHECK:           linalg.generic
// CHECK:             tensor.extract %arg0
// CHECK:           gpu.yield
// CHECK-NOT:     "quartet.tile"
func.func @flip(%arg0: tensor<3x4xf32>) -> tensor<3x4xf32> {
  %cst = arith.constant 0.000000e+00 : f32
  %c2 = arith.constant 2 : index
  %0 = tensor.empty() : tensor<3x4xf32>
  %1 = linalg.fill ins(%cst : f32) outs(%0 : tensor<3x4xf32>) -> tensor<3x4xf32>
  %2 = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%arg0 : tensor<3x4xf32>) outs(%1 : tensor<3x4xf32>) {
  ^bb0(%in: f32, %out: f32):
    %3 = linalg.index 0 : index
    %4 = linalg.index 1 : index
    %5 = arith.subi %c2, %3 : index
    %extracted = tensor.extract %arg0[%5, %4] : tensor<3x4xf32>
    linalg.yield %extracted : f32
  } -> tensor<3x4xf32>
  return %2 : tensor<3x4xf32>
}
