"""Known wrong answers and crashes the OpInfo differential test tolerates: bugs outside Quartet.

Each entry: (case name, dtype, target) -> why, with where the bug lives. Keep it short: an entry
is a promise to remove it once the upstream fix lands (or Quartet works around it). A wrong
answer or crash of Quartet's own is never listed here; it is fixed.
"""

KNOWN: dict[tuple[str, str, str], str] = {
}


def is_known(op: str, dtype: str, target: str) -> bool:
    return (op, dtype, target) in KNOWN or (op, "*", target) in KNOWN
