import subprocess
import sys

from server.search.bench_service import process_cpu_s

BUSY_CHILD = """
import time
start = time.process_time()
while time.process_time() - start < 0.5:
    pass
print("busy done", flush=True)
time.sleep(60)
"""


def test_bench_reads_another_process_cpu_time():
    child = subprocess.Popen([sys.executable, "-c", BUSY_CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "busy done"
        assert 0.5 <= process_cpu_s(child.pid) < 10
    finally:
        child.kill()
        child.wait()
