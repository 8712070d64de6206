"""Memory-bound kernels (issue 13, item 3): built here, checked and timed there (``bandwidth.py``)."""
