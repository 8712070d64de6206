// The quartet pipeline (all four, issue 17): one model through every stage, and what each
// compiler does on the models where it finds work.
//
// Self-attention (fp16): Roller's tiles, then Welder's fusion of the permute, both products,
// the softmax and the transpose back into one tile; the chain leaves Rammer and Grinder
// nothing to do (no independent tiles, no control flow), so the IR stays as Welder left it.
// RUN: quartet-opt %inputs/attention_f16.mlir --pass-pipeline='builtin.module(quartet{target=sm_90})' --mlir-print-ir-after-all -o /dev/null 2>&1 | %filecheck %s --check-prefix=STAGES
// STAGES: IR Dump After roller-fold-casts
// STAGES: IR Dump After welder-collapse-views
// STAGES: IR Dump After quartet-outline-tiles
// STAGES: "quartet.tile"
// STAGES: IR Dump After roller-fuse
// STAGES: IR Dump After roller-split-reductions
// STAGES: IR Dump After quartet-outline-data-movement
// STAGES: IR Dump After roller-config
// STAGES-NOT: kernel = "fused"
// STAGES: IR Dump After welder-fuse
// STAGES: kernel = "fused"
// STAGES: IR Dump After grinder-lift-control-flow
// STAGES-NOT: quartet.uvirtual
// STAGES: IR Dump After rammer-schedule
// STAGES-NOT: quartet.uvirtual
// STAGES: IR Dump After rammer-check
// STAGES: IR Dump After grinder-check
// STAGES-NOT: quartet.uvirtual
//
// A convolution block (conv, bias, ReLU, pooling: independent tiles of a small batch): Rammer
// packs its five tiles as vtasks of one uvirtual (one persistent kernel once lowered).
// RUN: quartet-opt %inputs/conv_block.mlir --pass-pipeline='builtin.module(quartet{target=sm_90})' | %filecheck %s --check-prefix=RAMMER
// RAMMER-LABEL: func.func @forward
// RAMMER:         "quartet.uvirtual"() ({
// RAMMER-COUNT-5: "quartet.vtask"() ({
// RAMMER:         }) {{{.*}}num_veus = 132 : i64{{.*}}sync = "counters"
//
// A residual block run under torch.cond: Grinder moves the scf.if into one uvirtual whose
// branches are vtasks (the predicate read on the device), chosen by its cost model.
// RUN: quartet-opt %inputs/cond_residual.mlir --pass-pipeline='builtin.module(quartet{target=sm_90})' | %filecheck %s --check-prefix=GRINDER
// GRINDER-LABEL: func.func @forward
// GRINDER:         "quartet.uvirtual"() ({
// GRINDER:           scf.if
// GRINDER:             "quartet.vtask"
// GRINDER:           } {quartet.control = "device"}
// GRINDER:         }) {{{.*}}control = "device"
