// RUN: quartet-opt %s --split-input-file --pass-pipeline='builtin.module(quartet-lower-cpu{stop_after=tile})' | %filecheck %s

// A configured tile: its block tile (32x16, reduction step 8) becomes the outer scf.for nest,
// its thread tile (4x4) an inner one over the parallel loops; partial tiles are clamped with
// affine.min, and the tile region is inlined. Entry arguments are marked read-only.
// CHECK-DAG: #[[ROWS:.*]] = affine_map<(d0) -> (-d0 + 50, 32)>
// CHECK-DAG: #[[COLS:.*]] = affine_map<(d0) -> (-d0 + 40, 16)>
// CHECK-DAG: #[[THREAD:.*]] = affine_map<(d0)[s0] -> (-d0 + s0, 4)>
// CHECK-LABEL: func.func @configured(
// CHECK-SAME:    {bufferization.writable = false}
// CHECK-NOT:     quartet.tile
// CHECK-DAG:     %[[C4:.*]] = arith.constant 4 : index
// CHECK-DAG:     %[[C8:.*]] = arith.constant 8 : index
// CHECK-DAG:     %[[C16:.*]] = arith.constant 16 : index
// CHECK-DAG:     %[[C32:.*]] = arith.constant 32 : index
// CHECK:         scf.for %[[I:.*]] = %{{.*}} to %{{.*}} step %[[C32]]
// CHECK:           scf.for %[[J:.*]] = %{{.*}} to %{{.*}} step %[[C16]]
// CHECK:             scf.for %[[K:.*]] = %{{.*}} to %{{.*}} step %[[C8]]
// CHECK:               %[[M:.*]] = affine.min #[[ROWS]](%[[I]])
// CHECK:               %[[N:.*]] = affine.min #[[COLS]](%[[J]])
// CHECK:               scf.for %[[TI:.*]] = %{{.*}} to %[[M]] step %[[C4]]
// CHECK:                 scf.for %[[TJ:.*]] = %{{.*}} to %[[N]] step %[[C4]]
// CHECK:                   affine.min #[[THREAD]](%[[TI]])[%[[M]]]
// CHECK:                   linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<?x8xf32>, tensor<8x?xf32>) outs(%{{.*}} : tensor<?x?xf32>)
func.func @configured(%a: tensor<50x64xf32>, %b: tensor<64x40xf32>, %c: tensor<50x40xf32>) -> tensor<50x40xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<50x64xf32>, tensor<64x40xf32>) outs(%c : tensor<50x40xf32>) -> tensor<50x40xf32>
    gpu.yield %1 : tensor<50x40xf32>
  }) {block_tile = array<i64: 32, 16, 8>, thread_tile = array<i64: 4, 4, 8>} : () -> tensor<50x40xf32>
  return %0 : tensor<50x40xf32>
}

// -----

// No schedule: the default tile is 32x32 over the two innermost parallel loops, one
// iteration of outer parallel loops, and reduction steps of 16 (partial here: 20 = 16 + 4).
// CHECK-LABEL: func.func @unconfigured(
// CHECK-DAG:     %[[C1:.*]] = arith.constant 1 : index
// CHECK-DAG:     %[[C16:.*]] = arith.constant 16 : index
// CHECK-DAG:     %[[C32:.*]] = arith.constant 32 : index
// CHECK:         scf.for %{{.*}} = %{{.*}} to %{{.*}} step %[[C1]]
// CHECK:           scf.for %{{.*}} = %{{.*}} to %{{.*}} step %[[C32]]
// CHECK:             scf.for %{{.*}} = %{{.*}} to %{{.*}} step %[[C32]]
// CHECK:               scf.for %{{.*}} = %{{.*}} to %{{.*}} step %[[C16]]
// CHECK:                 linalg.batch_matmul ins(%{{.*}}, %{{.*}} : tensor<1x?x?xf32>, tensor<1x?x?xf32>)
// CHECK-NOT:     scf.for
func.func @unconfigured(%a: tensor<3x40x20xf32>, %b: tensor<3x20x70xf32>, %c: tensor<3x40x70xf32>) -> tensor<3x40x70xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.batch_matmul ins(%a, %b : tensor<3x40x20xf32>, tensor<3x20x70xf32>) outs(%c : tensor<3x40x70xf32>) -> tensor<3x40x70xf32>
    gpu.yield %1 : tensor<3x40x70xf32>
  }) : () -> tensor<3x40x70xf32>
  return %0 : tensor<3x40x70xf32>
}

// -----

// Control flow around tiles stays; the tiles inside its regions are tiled like any other.
// CHECK-LABEL: func.func @branch(
// CHECK:         scf.if
// CHECK:           scf.for
// CHECK:             linalg.exp
// CHECK:         } else {
// CHECK:           scf.for
// CHECK:             linalg.negf
func.func @branch(%x: tensor<37x20xf32>, %pred: tensor<i1>) -> tensor<37x20xf32> {
  %e = tensor.empty() : tensor<37x20xf32>
  %p = tensor.extract %pred[] : tensor<i1>
  %r = scf.if %p -> tensor<37x20xf32> {
    %t = "quartet.tile"() ({
      %y = linalg.exp ins(%x : tensor<37x20xf32>) outs(%e : tensor<37x20xf32>) -> tensor<37x20xf32>
      gpu.yield %y : tensor<37x20xf32>
    }) {block_tile = array<i64: 16, 7>} : () -> tensor<37x20xf32>
    scf.yield %t : tensor<37x20xf32>
  } else {
    %t = "quartet.tile"() ({
      %y = linalg.negf ins(%x : tensor<37x20xf32>) outs(%e : tensor<37x20xf32>) -> tensor<37x20xf32>
      gpu.yield %y : tensor<37x20xf32>
    }) : () -> tensor<37x20xf32>
    scf.yield %t : tensor<37x20xf32>
  }
  return %r : tensor<37x20xf32>
}
