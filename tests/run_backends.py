"""Run the test suite once per Keras backend (jax, tensorflow, torch).

    python tests/run_backends.py [pytest args...]

Each backend runs in its own process (KERAS_BACKEND is read at import). The run
fails if any backend fails or collects no tests (pytest exit code 5). The last line
is the combined count: "N passed, N failed, N skipped".
"""

import os
import re
import subprocess
import sys
import time

BACKENDS = [b for b in os.environ.get("VISIONZOO_BACKENDS", "jax,tensorflow,torch").split(",") if b]


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failed_backends = []
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        start = time.time()
        print(f"\n===== KERAS_BACKEND={backend} =====", flush=True)
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                                 *argv], cwd=root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        last = ""
        for line in proc.stdout:
            sys.stdout.write(line)
            if line.strip():
                last = line
        code = proc.wait()
        for key, pattern in (("passed", r"(\d+) passed"), ("failed", r"(\d+) failed"),
                             ("skipped", r"(\d+) skipped"), ("errors", r"(\d+) errors?")):
            m = re.search(pattern, last)
            if m:
                totals[key] += int(m.group(1))
        print(f"===== {backend}: exit {code} in {time.time() - start:.0f}s =====", flush=True)
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
