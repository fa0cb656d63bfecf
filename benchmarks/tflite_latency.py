"""TFLite latency of exported visionzoo models in ai-edge-litert (XNNPACK), CPU.

    KERAS_BACKEND=tensorflow python benchmarks/tflite_latency.py litv2_s swin_tiny_patch4_window7_224

Exports each model (random weights, fp32, its default size) with
``visionzoo.export.to_tflite`` (builtin ops only, parity-checked), then times
``Interpreter.invoke`` on one image: 2 untimed calls, then the median of ``--repeats``
timed calls, for 1 and 2 threads. Prints the op kinds, max |tflite - keras| and the
file size. No speed is asserted.
"""

import argparse
import datetime
import os
import tempfile
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)

    import visionzoo
    from ai_edge_litert.interpreter import Interpreter

    print(f"# {datetime.date.today().isoformat()}, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            size = visionzoo.get_variant(name).input_size
            path = os.path.join(tmp, f"{name}.tflite")
            report = visionzoo.export.to_tflite(visionzoo.create_model(name), path)
            print(f"{name}: {report.size_bytes / 2**20:.1f} MiB, max|diff| "
                  f"{report.max_abs_diff:.2e} (max|ref| {report.ref_max_abs:.2e}), ops: "
                  f"{', '.join(sorted(report.op_names))}")
            x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
            for threads in args.threads:
                it = Interpreter(model_path=path, num_threads=threads)
                index = it.get_input_details()[0]["index"]
                it.resize_tensor_input(index, x.shape)
                it.allocate_tensors()
                it.set_tensor(index, x)
                for _ in range(2):
                    it.invoke()
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    it.invoke()
                    times.append(time.perf_counter() - start)
                print(f"  {threads} thread(s): median {1000 * np.median(times):.1f} ms")


if __name__ == "__main__":
    main()
