"""Training form vs deploy (re-parameterised) form: Keras CPU and TFLite latency.

    KERAS_BACKEND=tensorflow python benchmarks/deploy_latency.py shvit_s1 shvit_s4

For each model: build the training form (random weights, BatchNorm statistics
re-drawn so the fold is not trivial), ``visionzoo.reparameterize`` it, check both give
the same logits, then time, side by side in one run:

- Keras ``predict_on_batch`` on the active backend, batch 1 and 8 (median ms/batch of
  ``--repeats`` calls after warm-up);
- the builtin-only TFLite export of each form in ai-edge-litert (XNNPACK), batch 1,
  1 and 2 threads.

Prints a markdown table; no speed is asserted anywhere.
"""

import argparse
import datetime
import os
import platform
import tempfile

import numpy as np


def _median_ms(fn, repeats, warmup=3):
    from visionzoo.bench import _time_calls  # the timing loop `visionzoo bench` uses

    return 1000 * float(np.median(_time_calls(fn, repeats, warmup)[1]))


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        leaf = v.path.rsplit("/", 1)[-1]
        if leaf == "moving_variance":
            v.assign(rng.uniform(0.5, 1.5, tuple(v.shape)).astype("float32"))
        elif leaf == "moving_mean":
            v.assign(rng.normal(0, 0.1, tuple(v.shape)).astype("float32"))


def _tflite_ms(path, x, threads, repeats):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=threads)
    index = it.get_input_details()[0]["index"]
    it.allocate_tensors()
    it.set_tensor(index, x)
    return _median_ms(it.invoke, repeats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--no-tflite", action="store_true")
    args = p.parse_args(argv)

    import keras

    import visionzoo

    backend = keras.backend.backend()
    print(f"# {datetime.date.today().isoformat()}, backend {backend}, keras "
          f"{keras.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    header = ("| model | form | params | Keras b1 ms | Keras b8 ms | TFLite 1T ms | "
              "TFLite 2T ms | TFLite MiB |")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            size = visionzoo.get_variant(name).input_size
            train = visionzoo.create_model(name, input_shape=(size, size, 3))
            _randomize_bn(train)
            deploy = visionzoo.reparameterize(train)
            x8 = rng.standard_normal((8, size, size, 3)).astype("float32")
            ref, out = train.predict_on_batch(x8), deploy.predict_on_batch(x8)
            ref, out = keras.ops.convert_to_numpy(ref), keras.ops.convert_to_numpy(out)
            rel = np.max(np.abs(out - ref)) / np.max(np.abs(ref))
            print(f"<!-- {name}: deploy vs training form max|diff|/max|ref| = {rel:.1e} -->")
            for form, model in (("training", train), ("deploy", deploy)):
                b1 = _median_ms(lambda: model.predict_on_batch(x8[:1]), args.repeats)
                b8 = _median_ms(lambda: model.predict_on_batch(x8), args.repeats)
                cells = [name, form, f"{model.count_params() / 1e6:.2f}M", f"{b1:.1f}",
                         f"{b8:.1f}"]
                if args.no_tflite:
                    cells += ["-", "-", "-"]
                else:
                    path = os.path.join(tmp, f"{name}_{form}.tflite")
                    report = visionzoo.export.to_tflite(model, path)
                    t1 = _tflite_ms(path, x8[:1], 1, args.repeats)
                    t2 = _tflite_ms(path, x8[:1], 2, args.repeats)
                    cells += [f"{t1:.1f}", f"{t2:.1f}", f"{report.size_bytes / 2**20:.1f}"]
                print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
