"""Run the test suite once per Keras backend (jax, tensorflow, torch).

    python tests/run_backends.py [pytest args...]

Each backend runs in its own processes (KERAS_BACKEND is read at import). Without
explicit test paths in the arguments, each backend's test files are split into
``VISIONZOO_TEST_SHARDS`` shards (default 2, round robin over the sorted file names) and
up to ``VISIONZOO_TEST_JOBS`` shards (default 2) run side by side: most of a run is
single-threaded compilation and Python overhead, so two processes keep two cores busy,
and shards keep both busy until the end instead of leaving the last backend alone.
Every output line is prefixed with its backend (and shard). The run fails if any shard
fails or a backend collects no tests in any shard (pytest exit code 5). The last line is
the combined count: "N passed, N failed, N skipped".
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


def _run(job, argv, root, results, lock):
    backend, label, files = job
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.time()
    with lock:
        print(f"===== KERAS_BACKEND={backend} ({label}): started =====", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             *argv, *files],
                            cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in proc.stdout:
        with lock:
            sys.stdout.write(f"[{label}] {line}")
            sys.stdout.flush()
        if line.strip():
            last = line
    code = proc.wait()
    counts = {}
    for key, pattern in PATTERNS:
        m = re.search(pattern, last)
        counts[key] = int(m.group(1)) if m else 0
    results[label] = (backend, code, counts)
    with lock:
        print(f"===== {label}: exit {code} in {time.time() - start:.0f}s =====", flush=True)


def _jobs(root, argv, shards):
    """``[(backend, label, files)]``: one job per backend, or ``shards`` per backend (test
    files round robin) when ``argv`` names no existing path (pytest's own selection)."""
    names_paths = any(os.path.exists(os.path.join(root, a.split("::")[0]))
                      for a in argv if not a.startswith("-"))
    tests = os.path.join(root, "tests")
    files = sorted(os.path.join("tests", f) for f in os.listdir(tests)
                   if f.startswith("test_") and f.endswith(".py"))
    if names_paths or shards <= 1 or len(files) < 2:
        return [(b, b, []) for b in BACKENDS]
    shards = min(shards, len(files))
    return [(b, f"{b} {i + 1}/{shards}", files[i::shards])
            for b in BACKENDS for i in range(shards)]


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    jobs = max(1, int(os.environ.get("VISIONZOO_TEST_JOBS", "2")))
    shards = max(1, int(os.environ.get("VISIONZOO_TEST_SHARDS", "2")))
    results, lock = {}, threading.Lock()
    pending = _jobs(root, argv, shards)
    running = []
    while pending or running:
        while pending and len(running) < jobs:
            t = threading.Thread(target=_run, args=(pending.pop(0), argv, root, results, lock))
            t.start()
            running.append(t)
        time.sleep(0.5)
        running = [t for t in running if t.is_alive()]
    totals = {key: sum(counts[key] for _, _, counts in results.values())
              for key, _ in PATTERNS}
    failed_backends = []
    for backend in BACKENDS:
        codes = [code for b, code, _ in results.values() if b == backend]
        if all(code == 5 for code in codes):
            print(f"{backend}: pytest collected no tests; that is a failure here.")
            failed_backends.append(backend)
        elif any(code not in (0, 5) for code in codes):
            failed_backends.append(backend)
    if failed_backends:
        print(f"\nFailing backends: {', '.join(failed_backends)}")
    failed = totals["failed"] + totals["errors"]
    print(f"\n{totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return 1 if failed_backends else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
