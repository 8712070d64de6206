func.func @block_tile_length(%a: tensor<4x8xf32>, %b: tensor<8x16xf32>, %c: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %0 = "quartet.tile"() ({
    %1 = linalg.matmul ins(%a, %b : tensor<4x8xf32>, tensor<8x16xf32>) outs(%c : tensor<4x16xf32>) -> tensor<4x16xf32>
    gpu.yield %1 : tensor<4x16xf32>
  }) {block_tile = array<i64: 4, 16>} : () -> tensor<4x16xf32>
  return %0 : tensor<4x16xf32>
}
