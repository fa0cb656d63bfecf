"""Run the test suite once per Keras backend (jax, tensorflow, torch).

    python tests/run_backends.py [pytest args...]

Each backend runs in its own process (KERAS_BACKEND is read at import). Up to
``VISIONZOO_TEST_JOBS`` backends (default 2) run side by side: most of a run is
single-threaded compilation and Python overhead, so two processes keep two cores busy.
Every output line is prefixed with its backend. The run fails if any backend fails or
collects no tests (pytest exit code 5). The last line is the combined count:
"N passed, N failed, N skipped".
"""

import os
import re
import subprocess
import sys
import threading
import time

BACKENDS = [b for b in os.environ.get("VISIONZOO_BACKENDS", "jax,tensorflow,torch").split(",") if b]
PATTERNS = (("passed", r"(\d+) passed"), ("failed", r"(\d+) failed"),
            ("skipped", r"(\d+) skipped"), ("errors", r"(\d+) errors?"))


def _run(backend, argv, root, results, lock):
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.time()
    with lock:
        print(f"===== KERAS_BACKEND={backend}: started =====", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv],
                            cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"[{backend}] {line}")
            sys.stdout.flush()
        if line.strip():
            last = line
    code = proc.wait()
    counts = {}
    for key, pattern in PATTERNS:
        m = re.search(pattern, last)
        counts[key] = int(m.group(1)) if m else 0
    results[backend] = (code, counts)
    with lock:
        print(f"===== {backend}: exit {code} in {time.time() - start:.0f}s =====", flush=True)


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    jobs = max(1, int(os.environ.get("VISIONZOO_TEST_JOBS", "2")))
    results, lock = {}, threading.Lock()
    pending = list(BACKENDS)
    running = []
    while pending or running:
        while pending and len(running) < jobs:
            t = threading.Thread(target=_run, args=(pending.pop(0), argv, root, results, lock))
            t.start()
            running.append(t)
        time.sleep(0.5)
        running = [t for t in running if t.is_alive()]
    totals = {key: sum(results[b][1][key] for b in BACKENDS) for key, _ in PATTERNS}
    failed_backends = []
    for backend in BACKENDS:
        code = results[backend][0]
        if code == 5:
            print(f"{backend}: pytest collected no tests; that is a failure here.")
        if code != 0:
            failed_backends.append(backend)
    if failed_backends:
        print(f"\nFailing backends: {', '.join(failed_backends)}")
    failed = totals["failed"] + totals["errors"]
    print(f"\n{totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if failed_backends else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
