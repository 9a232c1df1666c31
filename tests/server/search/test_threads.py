import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
import faiss
import numpy  # noqa: F401 (its BLAS is what the numpy runtime limits)
from threadpoolctl import threadpool_info
from common.config import config_from_dict
from server.search.threads import apply_thread_settings

search = {"query_runtime": sys.argv[1], "faiss_threads": 3, "torch_threads": 1}
apply_thread_settings(config_from_dict({"search": search}).search)
blas = [i["num_threads"] for i in threadpool_info() if "numpy" in i["filepath"]]
print(json.dumps({"faiss": faiss.omp_get_max_threads(), "torch": "torch" in sys.modules,
                  "numpy_blas": blas}))
"""


@pytest.mark.parametrize("runtime", ["numpy", "torch"])
def test_each_library_gets_its_own_thread_count(runtime):
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, runtime], capture_output=True, text=True, check=True
    )
    out = json.loads(run.stdout)
    assert out["faiss"] == 3  # not overridden by the encoder's BLAS limit
    assert out["torch"] == (runtime == "torch")  # the numpy runtime never imports torch
    if runtime == "numpy":
        assert out["numpy_blas"] and set(out["numpy_blas"]) == {1}
