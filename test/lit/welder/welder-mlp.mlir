// Welder on a transformer MLP (LayerNorm(x + fc2(gelu(fc1(x)))), fp16, 2x4x32, hidden 64).
// Before grouping: Roller's passes with the reshape views removed: one tile per operator - fc1 with its
// bias and GELU (a GEMM epilogue), fc2, and the residual add with the layer norm (a row
// program). After grouping: welder-fuse merges fc2 and the row program into one tile (the row
// reduction forces whole rows into fc2's block tile; the GEMM's rows stay in shared memory:
// welder.root_level = 1). Verbose: the grouping decisions under verbose=true.
// RUN: quartet-opt %inputs/mlp_f16.mlir --pass-pipeline='builtin.module(roller-fold-casts,welder-collapse-views,quartet-outline-tiles,roller-fuse{target=sm_90},roller-config{target=sm_90})' | filecheck %s --check-prefix=BEFORE
// RUN: quartet-opt %inputs/mlp_f16.mlir --pass-pipeline='builtin.module(welder{target=sm_90})' | filecheck %s --check-prefix=AFTER
// RUN: quartet-opt %inputs/mlp_f16.mlir --pass-pipeline='builtin.module(welder{target=sm_90 verbose=true})' -o /dev/null 2>&1 | filecheck %s --check-prefix=WHY
// A wider MLP (64 -> 256 -> 64 on 16 tokens, through quartet-compile): fc1 and fc2 become one
// kernel (welder.pattern = "gemm_chain": the hidden activation stays in shared memory); the
// residual add and the layer norm stay a row program.
// RUN: quartet-compile %S/../../../frontend/models.py:MLP --input 2x8x64:f16 --target sm_90 --pipeline welder --emit quartet | filecheck %s --check-prefix=CHAIN

// BEFORE-LABEL: func.func @forward
// BEFORE:         "quartet.tile"() ({
// BEFORE:           linalg.fill
// BEFORE-NEXT:      linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]
// BEFORE:           math.erf
// BEFORE:         kernel = "gemm"
// BEFORE:         "quartet.tile"() ({
// BEFORE-NEXT:      linalg.fill
// BEFORE-NEXT:      linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]
// BEFORE:         kernel = "gemm"
// BEFORE:         "quartet.tile"() ({
// BEFORE:           linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]
// BEFORE:           math.rsqrt
// BEFORE:         kernel = "row"
// BEFORE-NOT:     quartet.tile

// AFTER-LABEL: func.func @forward
// AFTER:         "quartet.tile"() ({
// AFTER:           math.erf
// AFTER:         kernel = "gemm"{{.*}}welder.bytes = [[B0:[0-9]+]] : i64, welder.bytes_unfused = [[B0]] : i64, welder.model_us = {{.*}}, welder.tiles = 1 : i64
// AFTER:         %[[F:.*]] = "quartet.tile"() ({
// AFTER-NEXT:      linalg.fill
// AFTER-NEXT:      linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]
// AFTER:           linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]
// AFTER:           math.rsqrt
// AFTER:           gpu.yield
// AFTER-NEXT:    }) {block_tile = array<i64: 8, 32, 64>, {{.*}}kernel = "fused"{{.*}}welder.params = {bk = 32 : i64, bm = 32 : i64, engine = "mma"{{.*}}welder.pattern = "gemm_rows", welder.root_level = 1 : i64, welder.tiles = 2 : i64}
// AFTER-NEXT:    tensor.expand_shape %[[F]]
// AFTER-NOT:     quartet.tile

// WHY: welder: not fused: tiles [0] + [1]: attention: {{.*}}; gemm_rows: 2 contractions, a GEMM with a row program has 1
// WHY: welder: fused: tiles [1] + [2]: fused:gemm_rows: {{.*}} us < {{.*}} us apart
// WHY: welder: group [#1 linalg.generic, #2 linalg.generic] -> fused:gemm_rows

// CHAIN:       "quartet.tile"() ({
// CHAIN:         iterator_types = ["parallel", "parallel", "reduction"]
// CHAIN:         math.erf
// CHAIN:         iterator_types = ["parallel", "parallel", "reduction"]
// CHAIN:       kernel = "fused"{{.*}}welder.pattern = "gemm_chain"
// CHAIN:       "quartet.tile"() ({
// CHAIN:         math.rsqrt
// CHAIN:       kernel = "row"
// CHAIN-NOT:   quartet.tile
