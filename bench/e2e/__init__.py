"""End-to-end checks of GPU artifacts: a CPU twin of an artifact's host program (here) and
the device script that runs artifacts on the H100 against PyTorch eager (``run.py``)."""
