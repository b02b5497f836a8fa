#!/usr/bin/env bash
# The CUDA checks of the test suite, for a machine with a GPU and no network (torch preinstalled).
set -euo pipefail
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2 || true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_ops.py tests/test_templatize.py tests/test_fuse.py -x "$@"
