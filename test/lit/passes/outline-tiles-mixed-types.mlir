// An op whose read results have different types (max with its index, as torch-mlir imports
// torch.max(x, dim)) becomes one tile per result type, each with its own copy of the op; the
// results of one Quartet op share a type (IRDL in MLIR 22). Inlining gives the op back per type.
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-outline-tiles)' | filecheck %s
// RUN: quartet-opt %s --pass-pipeline='builtin.module(quartet-outline-tiles,quartet-inline-tiles,cse)' | filecheck %s --check-prefix=INLINE

#map = affine_map<(d0, d1) -> (d0, d1)>
#map1 = affine_map<(d0, d1) -> (d0)>
// CHECK-LABEL: func.func @max_with_index
// CHECK:         %[[V:.*]] = "quartet.tile"() ({
// CHECK:           %[[G1:.*]]:2 = linalg.generic
// CHECK:           gpu.yield %[[G1]]#0 : tensor<4xf32>
// CHECK:         }) : () -> tensor<4xf32>
// CHECK:         %[[I:.*]] = "quartet.tile"() ({
// CHECK:           %[[G2:.*]]:2 = linalg.generic
// CHECK:           gpu.yield %[[G2]]#1 : tensor<4xi64>
// CHECK:         }) : () -> tensor<4xi64>
// CHECK:         return %[[V]], %[[I]]
// INLINE-LABEL: func.func @max_with_index
// INLINE-COUNT-1: linalg.generic
// INLINE-NOT:   quartet.tile
func.func @max_with_index(%x: tensor<4x8xf32>, %v0: tensor<4xf32>, %i0: tensor<4xi64>)
    -> (tensor<4xf32>, tensor<4xi64>) {
  %r:2 = linalg.generic {indexing_maps = [#map, #map1, #map1],
                         iterator_types = ["parallel", "reduction"]}
      ins(%x : tensor<4x8xf32>) outs(%v0, %i0 : tensor<4xf32>, tensor<4xi64>) {
  ^bb0(%in: f32, %v: f32, %i: i64):
    %j = linalg.index 1 : index
    %j64 = arith.index_cast %j : index to i64
    %gt = arith.cmpf ogt, %in, %v : f32
    %nv = arith.select %gt, %in, %v : f32
    %ni = arith.select %gt, %j64, %i : i64
    linalg.yield %nv, %ni : f32, i64
  } -> (tensor<4xf32>, tensor<4xi64>)
  return %r#0, %r#1 : tensor<4xf32>, tensor<4xi64>
}
