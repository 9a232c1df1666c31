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


THREAD_SCRIPT = """
import json, threading
import faiss
from common.config import config_from_dict
from server.search.threads import apply_thread_settings, faiss_thread_setup

search = config_from_dict({"search": {"faiss_threads": 3}}).search
apply_thread_settings(search)
seen = {}

def later(name, setup):
    setup()
    seen[name] = faiss.omp_get_max_threads()

for name, setup in (("plain", lambda: None), ("set_up", faiss_thread_setup(search))):
    thread = threading.Thread(target=later, args=(name, setup))
    thread.start()
    thread.join()
print(json.dumps({"main": faiss.omp_get_max_threads(), **seen}))
"""


def test_a_search_thread_started_later_gets_faiss_threads_from_its_setup():
    run = subprocess.run(
        [sys.executable, "-c", THREAD_SCRIPT], capture_output=True, text=True, check=True
    )
    out = json.loads(run.stdout)
    assert out["main"] == 3 and out["set_up"] == 3
    assert out["plain"] != 3  # OpenMP's count is per thread: why the setup exists
