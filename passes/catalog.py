"""Every module that registers a Quartet pass or pipeline, imported once by the registry.

Add a line here when you add a pass module; the order is the order of ``--list-passes``.
"""

from quartet.passes import outline  # noqa: F401  quartet-outline-tiles, quartet-inline-tiles
from quartet.passes.roller import config  # noqa: F401  roller-config
from quartet.passes.roller import fuse  # noqa: F401  roller-fuse
from quartet.passes.roller import casts  # noqa: F401  roller-fold-casts
from quartet.lowering import cpu  # noqa: F401  quartet-lower-cpu
from quartet.passes import pipelines  # noqa: F401  roller
from quartet.lowering import gpu  # noqa: F401  quartet-lower-gpu
