# Make quartet.runtime importable from a plain copy of the repository, without installing it
# (the GPU machine has no package index and no MLIR). From the repository root:
#
#     source bench/device_env.sh && python3 -m quartet.bench.selftest
#
# It links quartet/{__init__,errors}.py, runtime/ and tools/ into a temporary quartet/ package, puts
# that first on PYTHONPATH, and sets PYTHONSAFEPATH=1 so that the repository's own quartet/
# folder (which holds no runtime/) does not shadow it.
_quartet_site="$(mktemp -d)"
mkdir -p "$_quartet_site/quartet"
ln -s "$PWD/quartet/__init__.py" "$PWD/quartet/errors.py" "$_quartet_site/quartet/"
ln -s "$PWD/runtime" "$_quartet_site/quartet/runtime"
# quartet-run (python3 -m quartet.tools.quartet_run) imports no MLIR either.
ln -s "$PWD/tools" "$_quartet_site/quartet/tools"
# the GPU-machine scripts (bench/selftest.py, bench/profile_call.py, bench/run.py).
ln -s "$PWD/bench" "$_quartet_site/quartet/bench"
# bench/suite.py builds the zoo's workloads (frontend/zoo.py: torch only; importing the frontend
# package imports no MLIR), and quartet/progress.py beside errors.py.
ln -s "$PWD/frontend" "$_quartet_site/quartet/frontend"
ln -s "$PWD/quartet/progress.py" "$_quartet_site/quartet/"
export PYTHONPATH="$_quartet_site${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
unset _quartet_site
