"""Training helpers and the end-to-end demo behind ``visionzoo demo``.

    from visionzoo.training.demo import demo
    results = demo(out="visionzoo_demo")   # train, export to TFLite, run it
    print(results["keras"]["test_accuracy"])

The submodule is imported on use only (it pulls in Keras and scikit-learn).
"""
