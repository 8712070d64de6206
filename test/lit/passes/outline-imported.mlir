// quartet-outline-tiles and quartet-inline-tiles on IR that torch-mlir imported from PyTorch
// models (test/lit/frontend/inputs, written by `python -m quartet.frontend.emit_lit_inputs`).

// MLP (linear-gelu-linear, residual, layernorm): 22 linalg ops, 22 tiles.
// RUN: quartet-opt %inputs/mlp.mlir --pass-pipeline='builtin.module(quartet-outline-tiles)' | %filecheck %s --check-prefix=MLP
// MLP-LABEL: func.func @forward
// MLP-COUNT-22: "quartet.tile"() ({
// MLP-NOT: "quartet.tile"
// MLP: return
// RUN: quartet-opt %inputs/mlp.mlir --pass-pipeline='builtin.module(quartet-outline-tiles,quartet-inline-tiles)' > %t.mlp
// RUN: quartet-opt %inputs/mlp.mlir | diff - %t.mlp

// Attention written as separate ops: 24 tiles. torch-mlir's softmax takes the row max with a
// max-with-index generic; the unused i64 index stays inside its tile.
// RUN: quartet-opt %inputs/attention.mlir --pass-pipeline='builtin.module(quartet-outline-tiles)' | %filecheck %s --check-prefix=ATTN
// ATTN-LABEL: func.func @forward
// ATTN: %[[MAX:[0-9]+]]:2 = linalg.generic {{.*}} outs(%{{.*}}, %{{.*}} : tensor<2x2x8xf32>, tensor<2x2x8xi64>)
// ATTN: gpu.yield %[[MAX]]#0 : tensor<2x2x8xf32>
// ATTN-NEXT: }) : () -> tensor<2x2x8xf32>
// RUN: quartet-opt %inputs/attention.mlir --pass-pipeline='builtin.module(quartet-outline-tiles)' | grep -c '"quartet.tile"' | %filecheck %s --check-prefix=ATTNCOUNT
// ATTNCOUNT: 24
// RUN: quartet-opt %inputs/attention.mlir --pass-pipeline='builtin.module(quartet-outline-tiles,quartet-inline-tiles)' > %t.attn
// RUN: quartet-opt %inputs/attention.mlir | diff - %t.attn

// Conv block (conv, bias, relu, max pool): each op its own tile.
// RUN: quartet-opt %inputs/conv_block.mlir --pass-pipeline='builtin.module(quartet-outline-tiles)' | %filecheck %s --check-prefix=CONV
// CONV-LABEL: func.func @forward
// CONV: "quartet.tile"() ({
// CONV-NEXT: linalg.broadcast
// CONV: "quartet.tile"() ({
// CONV-NEXT: linalg.conv_2d_nchw_fchw
// CONV: "quartet.tile"() ({
// CONV-NEXT: linalg.generic
// CONV: "quartet.tile"() ({
// CONV-NEXT: linalg.fill
// CONV: "quartet.tile"() ({
// CONV-NEXT: linalg.pooling_nchw_max
// RUN: quartet-opt %inputs/conv_block.mlir --pass-pipeline='builtin.module(quartet-outline-tiles,quartet-inline-tiles)' > %t.conv
// RUN: quartet-opt %inputs/conv_block.mlir | diff - %t.conv

// Control flow: tiles inside scf.while (LSTM loop) and scf.if (torch.cond) bodies.
// RUN: quartet-opt %inputs/lstm_loop.mlir --pass-pipeline='builtin.module(quartet-outline-tiles)' | %filecheck %s --check-prefix=LOOP
// LOOP: scf.while
// LOOP: linalg.matmul
// LOOP-NEXT: gpu.yield
// RUN: quartet-opt %inputs/cond_residual.mlir --pass-pipeline='builtin.module(quartet-outline-tiles)' | %filecheck %s --check-prefix=COND
// COND: scf.if
// COND: linalg.matmul
// COND-NEXT: gpu.yield
