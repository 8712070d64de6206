# Make quartet.runtime importable from a plain copy of the repository, without installing it
# (the GPU machine has no package index and no MLIR). From the repository root:
#
#     source runtime/device_env.sh && python3 -m quartet.runtime.device_selftest
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
export PYTHONPATH="$_quartet_site${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
unset _quartet_site
