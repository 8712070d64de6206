// RUN: quartet-opt --list-passes | %filecheck %s
// CHECK: Quartet passes:
// CHECK-DAG: quartet-outline-tiles {{ +}}wrap every linalg op of every function in its own quartet.tile
// CHECK-DAG: quartet-inline-tiles {{ +}}move the ops of every quartet.tile back in place
// CHECK-DAG: quartet-outline-data-movement {{ +}}pads, strided slices and concatenations
// CHECK-DAG: rammer-schedule {{ +}}Rammer: schedule the tiles of each segment side by side
// CHECK-DAG: rammer-check {{ +}}check every quartet.uvirtual's schedule on the CPU
// CHECK: Quartet pipelines:
// CHECK-DAG: rammer {{ +}}Rammer: Roller's tiles, then independent tiles side by side
