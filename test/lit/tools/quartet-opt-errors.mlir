// Every user mistake: one line naming the problem and where, exit status 1, no traceback,
// no partial output file.

// RUN: not quartet-opt %s.missing 2>&1 | %filecheck %s --check-prefix=MISSING
// MISSING: quartet-opt-errors.mlir.missing: error: could not open input file: no such file
// MISSING-NOT: Traceback

// RUN: not quartet-opt %s --pass-pipeline='builtin.module(no-such-pass)' 2>&1 | %filecheck %s --check-prefix=UNKNOWN
// UNKNOWN: --pass-pipeline: error: unknown pass or pipeline 'no-such-pass' (see quartet-opt --list-passes)
// UNKNOWN-NOT: Traceback

// RUN: not quartet-opt %s --pass-pipeline='builtin.module(quartet-outline-tiles{depth=2})' 2>&1 | %filecheck %s --check-prefix=BADOPT
// BADOPT: --pass-pipeline: error: unknown option 'depth' for pass 'quartet-outline-tiles' (options: none)

// RUN: not quartet-opt %s --pass-pipeline='builtin.module(canonicalize{no-such-option=1})' 2>&1 | %filecheck %s --check-prefix=UPSTREAMOPT
// UPSTREAMOPT: --pass-pipeline: error: bad pass 'canonicalize{no-such-option=1}': {{.*}}no such option no-such-option

// RUN: not quartet-opt %s --pass-pipeline='quartet-outline-tiles' 2>&1 | %filecheck %s --check-prefix=ANCHOR
// ANCHOR: --pass-pipeline: error: pass pipeline must have the form 'builtin.module(...)', got 'quartet-outline-tiles'

// RUN: not quartet-opt %s --pass-pipeline='builtin.module(func.func(cse)' 2>&1 | %filecheck %s --check-prefix=BRACKETS
// BRACKETS: --pass-pipeline: error: unbalanced brackets in pass pipeline 'func.func(cse'

// RUN: not quartet-opt %s --no-such-flag 2>&1 | %filecheck %s --check-prefix=FLAG
// FLAG: error: quartet-opt: unrecognized arguments: --no-such-flag

// A failing run leaves no output file behind.
// RUN: rm -f %t.out
// RUN: not quartet-opt %S/inputs/bad-schedule.mlir -o %t.out 2>&1 | %filecheck %s --check-prefix=VERIFY
// VERIFY: bad-schedule.mlir:2:8: error: 'quartet.tile' op attribute 'block_tile' has 2 entries
// RUN: not test -e %t.out

// A good run writes it.
// RUN: quartet-opt %s -o %t.out && %filecheck %s --check-prefix=GOOD --input-file %t.out
// GOOD: func.func @identity

func.func @identity(%a: tensor<4xf32>) -> tensor<4xf32> {
  return %a : tensor<4xf32>
}

// RUN: not quartet-opt %s --pass-pipeline='builtin.module(roller-fuse{target=sm_99})' 2>&1 | %filecheck %s --check-prefix=FUSETARGET
// FUSETARGET: --pass-pipeline: error: unknown target 'sm_99' (known targets: sm_90, sm_80, gfx942, cpu)
// FUSETARGET-NOT: Traceback
