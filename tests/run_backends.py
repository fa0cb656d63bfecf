"""Run the test suite once per Keras backend (jax, tensorflow, torch).

    python tests/run_backends.py [pytest args...]

Each backend runs in its own processes (KERAS_BACKEND is read at import). Without
explicit test paths in the arguments, each backend's test files are split into
``VISIONZOO_TEST_SHARDS`` shards (default 2) and ``VISIONZOO_TEST_JOBS`` processes
(default 2) run side by side: most of a run is single-threaded compilation and Python
overhead, so two processes keep two cores busy, and shards keep both busy until the end
instead of leaving the last backend alone.

Shards are balanced by the per-file seconds in ``tests/durations.json`` (measured on a
full run; files it does not list count as that backend's median file). Every run
measures them again (``tests/conftest.py`` sums each file's setup, call and teardown);
``VISIONZOO_TEST_TIMES_SAVE=path`` writes the new table there, in the same format, to
refresh the committed one.

The shards run in ``VISIONZOO_TEST_JOBS`` lanes: lane i runs shard i of every backend, and
each lane starts with a different backend, so with balanced shards (and more than one
backend) two shards of one backend do not run side by side. With one backend, its shards
share the lanes.

Each process gets ``OMP_WAIT_POLICY=PASSIVE`` (unless set): torch's OpenMP threads then
sleep between parallel regions instead of spinning on cores the neighbouring process
needs. Measured here (2 cores) on the same tests: two torch processes side by side took
61 s with spinning threads and 28 s with passive ones (24 s for one alone); torch beside
TensorFlow 57 s and 40 s. A process alone runs as fast either way.

Every output line is prefixed with its backend (and shard). The run fails if any shard
fails or a backend collects no tests in any shard (pytest exit code 5). The last line is
the combined count: "N passed, N failed, N skipped".
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BACKENDS = [b for b in os.environ.get("VISIONZOO_BACKENDS", "jax,tensorflow,torch").split(",") if b]
PATTERNS = (("passed", r"(\d+) passed"), ("failed", r"(\d+) failed"),
            ("skipped", r"(\d+) skipped"), ("errors", r"(\d+) errors?"))


def _run(job, argv, root, results, lock, times_dir):
    backend, label, files, expected = job
    env = dict(os.environ, KERAS_BACKEND=backend,
               VISIONZOO_TEST_TIMES_OUT=os.path.join(times_dir, label.replace("/", "-") + ".json"))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning next to the other lane
    start = time.time()
    with lock:
        note = f", ~{expected:.0f}s expected" if expected else ""
        print(f"===== KERAS_BACKEND={backend} ({label}): started{note} =====", flush=True)
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


def _load_durations(root):
    path = os.path.join(root, "tests", "durations.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _balance(files, seconds, shards):
    """Split ``files`` into ``shards`` lists of near-equal total seconds (longest file
    first onto the lightest shard). Returns ``[(files, expected_seconds)]``."""
    known = [seconds[f] for f in files if f in seconds]
    default = statistics.median(known) if known else 1.0
    bins = [([], 0.0) for _ in range(shards)]
    for f in sorted(files, key=lambda f: (-seconds.get(f, default), f)):
        i = min(range(shards), key=lambda i: (bins[i][1], i))
        bins[i] = (bins[i][0] + [f], bins[i][1] + seconds.get(f, default))
    return [(sorted(fs), total) for fs, total in bins if fs]


def _jobs(root, argv, shards):
    """``[(backend, label, files, expected_seconds)]``: one job per backend, or ``shards``
    per backend (balanced by tests/durations.json) when ``argv`` names no existing path
    (pytest's own selection)."""
    names_paths = any(os.path.exists(os.path.join(root, a.split("::")[0]))
                      for a in argv if not a.startswith("-"))
    tests = os.path.join(root, "tests")
    files = sorted(f"tests/{f}" for f in os.listdir(tests)
                   if f.startswith("test_") and f.endswith(".py"))
    if names_paths or shards <= 1 or len(files) < 2:
        return [(b, b, [], 0.0) for b in BACKENDS]
    durations = _load_durations(root)
    jobs = []
    for b in BACKENDS:
        seconds = durations.get(b, {})
        parts = _balance(files, seconds, min(shards, len(files)))
        jobs += [(b, f"{b} {i + 1}/{len(parts)}", fs, total if seconds else 0.0)
                 for i, (fs, total) in enumerate(parts)]
    return jobs


def _lanes(jobs, n):
    """Split ``jobs`` into ``n`` lanes run one after another: shard i goes to lane
    i mod n (an unsharded backend counts as shard 0 of its position), and lane k takes
    the backends in their order rotated by k."""
    order = {b: i for i, b in enumerate(dict.fromkeys(j[0] for j in jobs))}
    lanes = [[] for _ in range(max(1, n))]
    for position, job in enumerate(jobs):
        label = job[1]
        shard = int(label.split(" ")[1].split("/")[0]) - 1 if " " in label else position
        lanes[shard % len(lanes)].append(job)
    for k, lane in enumerate(lanes):
        lane.sort(key=lambda j: (order[j[0]] - k) % len(order))
    return [lane for lane in lanes if lane]


def _save_times(times_dir, path):
    """Merge the shards' per-file seconds into ``{backend: {file: seconds}}`` at ``path``."""
    table = {}
    for name in sorted(os.listdir(times_dir)):
        backend = name[:-len(".json")].split(" ")[0]  # "jax 1-2.json" or "jax.json"
        with open(os.path.join(times_dir, name)) as f:
            table.setdefault(backend, {}).update(json.load(f))
    table = {b: dict(sorted(t.items())) for b, t in sorted(table.items())}
    with open(path, "w") as f:
        json.dump(table, f, indent=1)
        f.write("\n")
    print(f"per-file seconds written to {path}")


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    jobs = max(1, int(os.environ.get("VISIONZOO_TEST_JOBS", "2")))
    shards = max(1, int(os.environ.get("VISIONZOO_TEST_SHARDS", "2")))
    results, lock = {}, threading.Lock()
    times_dir = tempfile.mkdtemp(prefix="visionzoo-test-times-")

    def lane(queue):
        for job in queue:
            _run(job, argv, root, results, lock, times_dir)

    threads = [threading.Thread(target=lane, args=(queue,))
               for queue in _lanes(_jobs(root, argv, shards), jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if os.environ.get("VISIONZOO_TEST_TIMES_SAVE"):
        _save_times(times_dir, os.environ["VISIONZOO_TEST_TIMES_SAVE"])
    shutil.rmtree(times_dir, ignore_errors=True)
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
