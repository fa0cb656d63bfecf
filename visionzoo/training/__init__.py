"""Training: fine-tuning, data pipelines, recipes, multi-device, and the end-to-end demo.

    from visionzoo.training.finetune import finetune        # `visionzoo train`
    result = finetune("poolformerv2_s12", "tfds:beans", weights="in1k", epochs=10)

    from visionzoo.training import distribution             # several devices
    with distribution.scope("data_parallel"):
        ...

    from visionzoo.training.demo import demo                # `visionzoo demo`
    results = demo(out="visionzoo_demo")   # train, export to TFLite, run it

Submodules are imported on use only (they pull in Keras, TensorFlow, scikit-learn).
"""
