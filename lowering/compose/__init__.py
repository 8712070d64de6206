"""quartet.lowering.compose: kernels made of block programs (standalone, side by side, looped)."""
