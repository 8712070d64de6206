// RUN: not quartet-opt %s --split-input-file 2>&1 | %filecheck %s

// CHECK: invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.tile' op attribute 'block_tile' has 2 entries, but the root op 'linalg.matmul' has 3 loops
func.func @block_tile_length(%a: tensor<4x8xf32>, %b: tensor<8x16xf32>, %c: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<4x8xf32>, tensor<8x16xf32>) outs(%c : tensor<4x16xf32>) -> tensor<4x16xf32>
    gpu.yield %1 : tensor<4x16xf32>
  }) {block_tile = array<i64: 4, 16>} : () -> tensor<4x16xf32>
  return %0 : tensor<4x16xf32>
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.tile' op thread_tile[1] = 32 exceeds block_tile[1] = 16
func.func @thread_exceeds_block(%a: tensor<4x8xf32>, %b: tensor<8x16xf32>, %c: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<4x8xf32>, tensor<8x16xf32>) outs(%c : tensor<4x16xf32>) -> tensor<4x16xf32>
    gpu.yield %1 : tensor<4x16xf32>
  }) {block_tile = array<i64: 4, 16, 8>, thread_tile = array<i64: 1, 32, 8>} : () -> tensor<4x16xf32>
  return %0 : tensor<4x16xf32>
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.tile' op attribute 'smem_padding' has 1 entries, but the root op 'linalg.matmul' has 2 inputs
func.func @padding_length(%a: tensor<4x8xf32>, %b: tensor<8x16xf32>, %c: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<4x8xf32>, tensor<8x16xf32>) outs(%c : tensor<4x16xf32>) -> tensor<4x16xf32>
    gpu.yield %1 : tensor<4x16xf32>
  }) {smem_padding = array<i64: 8>} : () -> tensor<4x16xf32>
  return %0 : tensor<4x16xf32>
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.tile' op attribute 'block_tile' entries must be positive
func.func @zero_tile(%a: tensor<4xf32>, %o: tensor<4xf32>) -> tensor<4xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.exp ins(%a : tensor<4xf32>) outs(%o : tensor<4xf32>) -> tensor<4xf32>
    gpu.yield %1 : tensor<4xf32>
  }) {block_tile = array<i64: 0>} : () -> tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.tile' op attribute 'edge_levels' entries must be 0 (global), 1 (shared) or 2 (register)
func.func @edge_level(%a: tensor<4xf32>, %o: tensor<4xf32>) -> tensor<4xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.exp ins(%a : tensor<4xf32>) outs(%o : tensor<4xf32>) -> tensor<4xf32>
    %2 = linalg.exp ins(%1 : tensor<4xf32>) outs(%o : tensor<4xf32>) -> tensor<4xf32>
    gpu.yield %2 : tensor<4xf32>
  }) {edge_levels = array<i64: 3>} : () -> tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.tile' op holds no linalg op
func.func @no_linalg(%a: tensor<4xf32>) -> tensor<4xf32> {
  %0 = "quartet.tile"() ({
    gpu.yield %a : tensor<4xf32>
  }) : () -> tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 4]]:5: error: 'gpu.yield' op types (tensor<4xf32>) do not match the results of its parent 'quartet.tile' (tensor<8xf32>)
func.func @yield_types(%a: tensor<4xf32>, %o: tensor<4xf32>) -> tensor<8xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.exp ins(%a : tensor<4xf32>) outs(%o : tensor<4xf32>) -> tensor<4xf32>
    gpu.yield %1 : tensor<4xf32>
  }) : () -> tensor<8xf32>
  return %0 : tensor<8xf32>
}

// -----

// A region must end in gpu.yield; any other terminator is refused by its own verifier.
// CHECK: invalid.mlir:[[# @LINE + 4]]:5: error: 'func.return' op expects parent op 'func.func'
func.func @no_yield(%a: tensor<4xf32>, %o: tensor<4xf32>) -> tensor<4xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.exp ins(%a : tensor<4xf32>) outs(%o : tensor<4xf32>) -> tensor<4xf32>
    func.return %1 : tensor<4xf32>
  }) : () -> tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

// IRDL checks the result kinds: a tile returns tensors.
// CHECK: invalid.mlir:[[# @LINE + 2]]:8: error: expected base type 'builtin.tensor' but got 'builtin.f32'
func.func @scalar_result(%a: f32) -> f32 {
  %0 = "quartet.tile"() ({
    gpu.yield %a : f32
  }) : () -> f32
  return %0 : f32
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 3]]:10: error: 'quartet.vtask' op vEU range [6, 10) lies outside the 8 vEUs of its 'quartet.uvirtual'
func.func @veu_range(%a: tensor<4xf32>, %o: tensor<4xf32>) -> tensor<4xf32> {
  %0 = "quartet.uvirtual"() ({
    %1 = "quartet.vtask"() ({
      %2 = "quartet.tile"() ({
        %3 = linalg.exp ins(%a : tensor<4xf32>) outs(%o : tensor<4xf32>) -> tensor<4xf32>
        gpu.yield %3 : tensor<4xf32>
      }) : () -> tensor<4xf32>
      gpu.yield %2 : tensor<4xf32>
    }) {veu_begin = 6 : i64, veu_count = 4 : i64, step = 0 : i64} : () -> tensor<4xf32>
    gpu.yield %1 : tensor<4xf32>
  }) {num_veus = 8 : i64, resultSegmentSizes = array<i32: 1, 0, 0, 0, 0, 0, 0, 0>} : () -> tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.vtask' op must be nested in a 'quartet.uvirtual'
func.func @vtask_outside(%a: tensor<4xf32>, %o: tensor<4xf32>) -> tensor<4xf32> {
  %0 = "quartet.vtask"() ({
    %2 = "quartet.tile"() ({
      %3 = linalg.exp ins(%a : tensor<4xf32>) outs(%o : tensor<4xf32>) -> tensor<4xf32>
      gpu.yield %3 : tensor<4xf32>
    }) : () -> tensor<4xf32>
    gpu.yield %2 : tensor<4xf32>
  }) {veu_begin = 0 : i64, veu_count = 1 : i64, step = 0 : i64} : () -> tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 3]]:10: error: 'quartet.vtask' op attribute "veu_count" is expected but not provided
func.func @vtask_attrs(%a: tensor<4xf32>) -> tensor<4xf32> {
  %0 = "quartet.uvirtual"() ({
    %1 = "quartet.vtask"() ({
      gpu.yield %a : tensor<4xf32>
    }) {veu_begin = 0 : i64, step = 0 : i64} : () -> tensor<4xf32>
    gpu.yield %1 : tensor<4xf32>
  }) {num_veus = 8 : i64, resultSegmentSizes = array<i32: 1, 0, 0, 0, 0, 0, 0, 0>} : () -> tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 2]]:8: error: 'quartet.uvirtual' op needs num_veus >= 1 (got 0)
func.func @no_veus(%a: tensor<4xf32>) -> tensor<4xf32> {
  %0 = "quartet.uvirtual"() ({
    gpu.yield %a : tensor<4xf32>
  }) {num_veus = 0 : i64, resultSegmentSizes = array<i32: 1, 0, 0, 0, 0, 0, 0, 0>} : () -> tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

// An unknown op, an unknown attribute value, malformed text: parse errors with a location.
// CHECK: invalid.mlir:[[# @LINE + 2]]:17: error: operation being parsed with an unregistered dialect
func.func @unknown_op() {
  %0 = "foo.bar"() : () -> i32
  return
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 1]]:39: error: #"nope"<"1"> : 'none' attribute created with unregistered dialect
func.func @bad_attr() attributes {x = #nope<1>} {
  return
}

// -----

// CHECK: invalid.mlir:[[# @LINE + 1]]:22: error: expected non-function type
func.func @malformed( {

// -----

// Each result group of a uvirtual holds one type.
// CHECK: invalid.mlir:[[# @LINE + 2]]:10: error: expected 'tensor<4xf32>' but got 'tensor<1xi64>'
func.func @uvirtual_group_types(%x: tensor<4xf32>, %t: tensor<1xi64>) -> tensor<1xi64> {
  %0:2 = "quartet.uvirtual"() ({
    gpu.yield %x, %t : tensor<4xf32>, tensor<1xi64>
  }) {num_veus = 2 : i64, resultSegmentSizes = array<i32: 2, 0, 0, 0, 0, 0, 0, 0>} : () -> (tensor<4xf32>, tensor<1xi64>)
  return %0#1 : tensor<1xi64>
}
