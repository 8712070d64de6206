"""quartet.passes.analysis: analyses the passes share and whose verdicts they record on the IR
(the lowering reads the verdicts; it never asks the passes)."""
