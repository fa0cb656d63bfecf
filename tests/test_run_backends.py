"""tests/run_backends.py: how test files are split into shards, lanes and processes."""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("run_backends", ROOT / "tests" / "run_backends.py")
run_backends = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_backends)


def test_balance_puts_every_file_in_one_shard_with_near_equal_totals():
    seconds = {"a": 100.0, "b": 60.0, "c": 50.0, "d": 40.0, "e": 30.0, "f": 20.0}
    parts = run_backends._balance(list(seconds), seconds, 2)
    assert sorted(f for files, _ in parts for f in files) == sorted(seconds)
    totals = [total for _, total in parts]
    assert sum(totals) == sum(seconds.values())
    assert max(totals) - min(totals) <= 20  # a round robin over the names gives 190 / 110
    for files, total in parts:
        assert total == sum(seconds[f] for f in files) and files == sorted(files)


def test_balance_counts_unknown_files_as_the_median():
    parts = run_backends._balance(["a", "b", "c", "new"], {"a": 10.0, "b": 30.0, "c": 20.0}, 2)
    assert sum(total for _, total in parts) == 80.0  # "new" counted as 20
    assert sorted(total for _, total in parts) == [40.0, 40.0]
    parts = run_backends._balance(["x", "y", "z"], {}, 2)  # no table: equal weights
    assert sorted(len(files) for files, _ in parts) == [1, 2]


def test_jobs_split_each_backend(monkeypatch):
    monkeypatch.setattr(run_backends, "BACKENDS", ["jax", "torch"])
    jobs = run_backends._jobs(str(ROOT), ["-q"], 2)
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py"))
    for backend in ("jax", "torch"):
        mine = [j for j in jobs if j[0] == backend]
        assert [j[1] for j in sorted(mine, key=lambda j: j[1])] == [f"{backend} 1/2",
                                                                    f"{backend} 2/2"]
        assert sorted(f for j in mine for f in j[2]) == files


def test_lanes_never_run_two_shards_of_one_backend_together():
    jobs = [(b, f"{b} {i}/2", [], 10.0) for b in ("jax", "tensorflow", "torch")
            for i in (1, 2)]
    lanes = run_backends._lanes(jobs, 2)
    assert [[j[1] for j in lane] for lane in lanes] == [
        ["jax 1/2", "tensorflow 1/2", "torch 1/2"],
        ["tensorflow 2/2", "torch 2/2", "jax 2/2"]]
    # With equal lengths, the k-th job of each lane runs at the same time.
    for step in zip(*lanes):
        assert len({j[0] for j in step}) == len(step)
    unsharded = [(b, b, [], 0.0) for b in ("jax", "tensorflow", "torch")]
    assert [[j[0] for j in lane] for lane in run_backends._lanes(unsharded, 2)] == [
        ["jax", "torch"], ["tensorflow"]]
    assert run_backends._lanes(unsharded, 1) == [unsharded]


@pytest.mark.parametrize("argv", [
    ["tests/test_run_backends.py"],
    ["tests/test_run_backends.py::test_balance_counts_unknown_files_as_the_median", "-q"]])
def test_explicit_paths_run_unsharded(monkeypatch, argv):
    monkeypatch.setattr(run_backends, "BACKENDS", ["jax", "torch"])
    assert run_backends._jobs(str(ROOT), argv, 2) == [("jax", "jax", [], 0.0),
                                                      ("torch", "torch", [], 0.0)]


def test_saved_times_merge_shards_and_unsharded_runs(tmp_path):
    import json

    (tmp_path / "jax 1-2.json").write_text(json.dumps({"tests/test_a.py": 2.0}))
    (tmp_path / "jax 2-2.json").write_text(json.dumps({"tests/test_b.py": 3.0}))
    (tmp_path / "torch.json").write_text(json.dumps({"tests/test_a.py": 1.5}))
    out = tmp_path / "table.json"
    run_backends._save_times(str(tmp_path), str(out))
    assert json.loads(out.read_text()) == {
        "jax": {"tests/test_a.py": 2.0, "tests/test_b.py": 3.0},
        "torch": {"tests/test_a.py": 1.5}}


def test_each_process_gets_passive_openmp_waiting(monkeypatch, tmp_path):
    """Idle OpenMP threads must not spin on the other lane's core; a user's own setting
    is kept."""
    import threading

    seen = []

    class FakeProcess:
        def __init__(self, cmd, cwd, env, **kwargs):
            seen.append(env)
            self.stdout = iter(["3 passed, 1 skipped in 0.1s\n"])

        def wait(self):
            return 0

    monkeypatch.setattr(run_backends.subprocess, "Popen", FakeProcess)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    results = {}
    job = ("torch", "torch 1/2", ["tests/test_a.py"], 0)
    run_backends._run(job, [], str(ROOT), results, threading.Lock(), str(tmp_path))
    assert seen[-1]["OMP_WAIT_POLICY"] == "PASSIVE" and seen[-1]["KERAS_BACKEND"] == "torch"
    assert results["torch 1/2"] == ("torch", 0, {"passed": 3, "failed": 0, "skipped": 1,
                                                 "errors": 0})
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    run_backends._run(job, [], str(ROOT), results, threading.Lock(), str(tmp_path))
    assert seen[-1]["OMP_WAIT_POLICY"] == "ACTIVE"
