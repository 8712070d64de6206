// The committed importer outputs (python -m quartet.frontend.emit_lit_inputs) that other
// layers' lit tests start from: weights are function arguments, control flow stays structured,
// and every file round-trips through quartet-opt.

// RUN: quartet-opt %inputs/mlp.mlir | %filecheck %s --check-prefix=MLP
// MLP:       func.func @forward(%[[X:.*]]: tensor<2x4x32xf32>, %[[W1:.*]]: tensor<64x32xf32>, %{{.*}}: tensor<64xf32>, %[[W2:.*]]: tensor<32x64xf32>, %{{.*}}: tensor<32xf32>, %{{.*}}: tensor<32xf32>, %{{.*}}: tensor<32xf32>) -> tensor<2x4x32xf32>
// MLP-NOT:     arith.constant dense<{{.*}}> : tensor<64x32xf32>
// MLP:         linalg.transpose ins(%[[W1]] : tensor<64x32xf32>)
// MLP:         linalg.matmul
// MLP:         math.erf
// MLP:         linalg.transpose ins(%[[W2]] : tensor<32x64xf32>)
// MLP:         linalg.matmul
// MLP:         math.rsqrt
// MLP:         return

// RUN: quartet-opt %inputs/attention.mlir | %filecheck %s --check-prefix=ATTN
// ATTN-LABEL: func.func @forward(%{{.*}}: tensor<2x8x32xf32>, %{{.*}}: tensor<96x32xf32>, %{{.*}}: tensor<96xf32>, %{{.*}}: tensor<32x32xf32>, %{{.*}}: tensor<32xf32>) -> tensor<2x8x32xf32>
// ATTN:         linalg.matmul
// ATTN:         linalg.batch_matmul
// ATTN:         math.exp
// ATTN:         linalg.batch_matmul
// ATTN:         linalg.matmul

// RUN: quartet-opt %inputs/conv_block.mlir | %filecheck %s --check-prefix=CONV
// CONV-LABEL: func.func @forward(%{{.*}}: tensor<1x3x8x8xf32>, %{{.*}}: tensor<8x3x3x3xf32>, %{{.*}}: tensor<8xf32>) -> tensor<1x8x4x4xf32>
// CONV:         linalg.conv_2d_nchw_fchw
// CONV:         linalg.pooling_nchw_max

// RUN: quartet-opt %inputs/lstm_loop.mlir | %filecheck %s --check-prefix=LOOP
// LOOP-LABEL: func.func @forward
// LOOP:         scf.while
// LOOP:         scf.condition
// LOOP:         } do {
// LOOP:         linalg.matmul
// LOOP:         math.tanh
// LOOP:         scf.yield
// LOOP-NOT:     scf.for

// RUN: quartet-opt %inputs/cond_residual.mlir | %filecheck %s --check-prefix=COND
// COND:       func.func @forward(%[[X:.*]]: tensor<4x32xf32>
// COND:         %[[P:.*]] = tensor.extract %{{.*}}[] : tensor<i1>
// COND:         scf.if %[[P]] -> (tensor<4x32xf32>) {
// COND:           linalg.matmul
// COND:           scf.yield
// COND:         } else {
// COND-NEXT:      scf.yield %[[X]] : tensor<4x32xf32>
