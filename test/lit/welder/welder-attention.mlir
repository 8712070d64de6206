// Welder on self-attention written op by op (fp16, 2x7x32, 2 heads of 16; 7 tokens: the fused
X tiles - the qkv projection, the
// permute of q/k/v, q @ k^T, the scaled softmax, @ v, the transpose back, the output
// projection. After grouping: the permute, both products, the softmax and the transpose back are one
// tile (welder.pattern = "attention": online softmax, q/k/v read through the permute from the
// qkv projection's buffer, the result written in the order the output projection reads; the
// permute is staged in shared memory - the root op, welder.root_level = 1 - everything else
// stays in registers).
// RUN: quartet-opt %inputs/attention_f16.mlir --pass-pipeline='builtin.module(roller-fold-casts,welder-collapse-views,quartet-outline-tiles,roller-fuse{target=sm_90},roller-config{target=sm_90})' | filecheck %s --check-prefix=BEFORE
// RUN: quartet-opt %inputs/attention_f16.mlir --pass-pipeline='builtin.module(welder{target=sm_90})' | filecheck %s --check-prefix=AFTER
// RUN: quartet-opt %inputs/attention_f16.mlir --pass-pipeline='builtin.module(welder{target=sm_90 verbose=true})' -o /dev/null 2>&1 | filecheck %s --check-prefix=WHY

// BEFORE-LABEL: func.func @forward
// BEFORE:         kernel = "gemm"
// BEFORE:         linalg.transpose {{.*}} permutation = [2, 0, 3, 1, 4]
// BEFORE:         kernel = "fallback"
// BEFORE:         kernel = "gemm"
// BEFORE:         math.exp
// BEFORE:         kernel = "row"
// BEFORE:         linalg.batch_matmul
// BEFORE:         linalg.transpose {{.*}} permutation = [0, 2, 1, 3]
// BEFORE:         kernel = "fallback"
// BEFORE:         kernel = "gemm"
// BEFORE-NOT:     quartet.tile

// AFTER-LABEL: func.func @forward
// AFTER:         "quartet.tile"() ({
// AFTER:         kernel = "gemm"
// AFTER:         "quartet.tile"() ({
// AFTER-NEXT:      linalg.transpose {{.*}} permutation = [2, 0, 3, 1, 4]
// AFTER:           tensor.extract_slice
// AFTER:           tensor.collapse_shape
// AFTER:           iterator_types = ["parallel", "parallel", "parallel", "reduction"]
// AFTER:           math.exp
// AFTER:           arith.divf
// AFTER:           linalg.batch_matmul
// AFTER:           linalg.transpose {{.*}} permutation = [0, 2, 1, 3]
// AFTER-NEXT:      gpu.yield
// AFTER-NEXT:    }) {block_tile = array<i64: 3, 1, 1, 7, 16>, edge_levels = array<i64: 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2>, {{.*}}kernel = "fused", {{.*}}welder.params = {bm = 64 : i64, bn = 64 : i64}, welder.pattern = "attention", welder.root_level = 1 : i64, welder.tiles = 5 : i64} : () -> tensor<2x7x2x16xf16>
// AFTER:         "quartet.tile"() ({
// AFTER:         kernel = "gemm"
// AFTER-NOT:     quartet.tile

// WHY: welder: fused: tiles [1] + [2, 3, 4]: fused:attention:
// WHY: welder: fused: tiles [1, 2, 3, 4] + [5]: fused:attention:
// WHY: welder: not fused: tiles [1, 2, 3, 4, 5] + [6]: attention: 3 contractions, attention has 2
// WHY: welder: group [#1 linalg.transpose, #2 linalg.generic, #3 linalg.generic, #4 linalg.batch_matmul, #5 linalg.transpose] -> fused:attention {'bm': 64, 'bn': 64}
