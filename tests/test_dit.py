"""DiT and GroupDiff: official fixtures (incl. classifier-free guidance), live diffusers
parity, checkpoint conversion, the diffusion process and samplers, training with fit(),
group sampling with condition images, parameter counts and TFLite export."""

import json

import numpy as np
import pytest

import keras

import visionzoo
from visionzoo.backbones import dit
from visionzoo.layers.adaln import TimestepFrequencies, sincos_2d_table
from visionzoo.registry import get_variant, list_models
from visionzoo.training.diffusion import (DiffusionTrainer, GaussianDiffusion, cfg_forward,
                                          space_timesteps)
from visionzoo.weights import load_checkpoint
from visionzoo.weights.convert import CheckpointMismatchError

from conftest import BACKEND, parity_fixture

FULL_BACKEND = "torch"
MINI = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
            num_classes=10)


def _fixture(name):
    path = parity_fixture(name)
    data = np.load(path)
    meta = json.load(open(path[:-4] + ".json"))
    state = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
    return data, meta, state


def _nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


def _run(model, x, t, y, *extra):
    out = model.predict_on_batch([np.asarray(x, "float32"), np.asarray(t, "float32"),
                                  np.asarray(y, "int32")]
                                 + [np.asarray(e, "int32") for e in extra])
    return np.asarray(keras.ops.convert_to_numpy(out))


# --------------------------------------------------------------------------------------
# Reference parity
# --------------------------------------------------------------------------------------


def test_official_fixture_and_cfg_forward():
    data, meta, state = _fixture("dit_mini")
    tol = meta["tolerance"]
    model = dit.DiT(**dit.from_official_config(meta["config"]))
    assert dit.detect_layout(state) == "official"
    load_checkpoint(model, state)
    out = _run(model, _nhwc(data["input"]), data["input_t"], data["input_y"])
    assert np.max(np.abs(out.transpose(0, 3, 1, 2) - data["output"])) <= tol
    cfg = cfg_forward(model, _nhwc(data["input_cfg_x"]), data["input_cfg_t"],
                      data["input_cfg_y"], meta["inputs"]["cfg_scale"], guidance_channels=3)
    diff = np.max(np.abs(cfg.transpose(0, 3, 1, 2) - data["output_cfg"]))
    assert diff <= tol, diff


@pytest.mark.parametrize("name", ["dit_mini", "groupdiff_mini"])
def test_fixture_hook_for_verify(name):
    data, meta, _ = _fixture(name)
    rows = dit.verify_fixture({k: data[k] for k in data.files}, meta)
    assert [r[0] for r in rows] == (["output", "output_cfg"] if name == "dit_mini"
                                    else ["output", "output_fixed_ids"])
    for key, ours, ref, tol in rows:
        assert np.max(np.abs(ours - ref)) <= tol, key


def test_groupdiff_fixture_both_sample_id_sets():
    data, meta, state = _fixture("groupdiff_mini")
    n, m = data["input_t"].shape
    model = dit.DiT(**dit.from_official_config(meta["config"]), group_size=m)
    assert dit.detect_layout(state) == "groupdiff"
    load_checkpoint(model, state)
    x = _nhwc(data["input"].reshape((n * m,) + data["input"].shape[2:]))
    for ids, key in (("input_sample_ids", "output"), ("input_fixed_sample_ids",
                                                      "output_fixed_ids")):
        out = _run(model, x, data["input_t"].reshape(-1), data["input_y"].reshape(-1),
                   data[ids].reshape(-1))
        out = out.transpose(0, 3, 1, 2).reshape(data[key].shape)
        diff = np.max(np.abs(out - data[key]))
        assert diff <= meta["tolerance"], (key, diff)


def _diffusers_dit(torch, heads=4, head_dim=16, layers=2, sample=8, patch=2, classes=10,
                   channels=4, seed=0):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=channels,
        out_channels=2 * channels, num_layers=layers, sample_size=sample, patch_size=patch,
        num_embeds_ada_norm=classes).eval()
    gen = torch.Generator().manual_seed(seed)
    state = ref.state_dict()
    with torch.no_grad():
        for key, value in state.items():  # every tensor random, adaLN-Zero ones included
            if "embedding_table" in key:
                value.copy_(torch.randn(value.shape, generator=gen) * 0.5)
            elif value.ndim >= 2:
                fan_in = int(np.prod(value.shape[1:]))
                value.copy_(torch.randn(value.shape, generator=gen) / np.sqrt(fan_in))
            else:
                value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
        for key, value in state.items():  # one shared embedder, as in converted weights
            if ".norm1.emb." in key and not key.startswith("transformer_blocks.0."):
                value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    return ref


def _diffusers_case(torch, ref, batch=3, seed=1):
    cfg = ref.config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, cfg.in_channels, cfg.sample_size,
                             cfg.sample_size)).astype("float32")
    t = rng.integers(0, 1000, batch)
    y = rng.integers(0, cfg.num_embeds_ada_norm + 1, batch)  # null class included
    with torch.no_grad():
        out = ref(torch.from_numpy(x), timestep=torch.from_numpy(t),
                  class_labels=torch.from_numpy(y)).sample.numpy()
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    return x, t, y, out, state


def test_diffusers_parity():
    torch = pytest.importorskip("torch")
    ref = _diffusers_dit(torch)
    x, t, y, expected, state = _diffusers_case(torch, ref)
    model = dit.DiT(**dit.from_diffusers_config(dict(ref.config)))
    assert dit.detect_layout(state) == "diffusers"
    load_checkpoint(model, state)
    out = _run(model, _nhwc(x), t, y).transpose(0, 3, 1, 2)
    assert np.max(np.abs(out - expected)) <= 5e-4 * max(1.0, np.max(np.abs(expected)))
    # The official configuration computes the official function, which differs.
    official = dit.DiT(**dict(dit.from_diffusers_config(dict(ref.config)),
                              timestep_freq_shift=0.0, mlp_norm_eps=1e-6))
    load_checkpoint(official, state)
    assert np.max(np.abs(_run(official, _nhwc(x), t, y).transpose(0, 3, 1, 2) - expected)) > 1e-3


@pytest.mark.slow
def test_real_variant_dit_s_2_against_diffusers():
    if BACKEND != FULL_BACKEND:
        pytest.skip(f"one full-size variant, on {FULL_BACKEND}")
    torch = pytest.importorskip("torch")
    ref = _diffusers_dit(torch, heads=6, head_dim=64, layers=12, sample=32, patch=2,
                         classes=1000, seed=3)
    x, t, y, expected, state = _diffusers_case(torch, ref, batch=2)
    model = visionzoo.create_model("dit_s_2", timestep_freq_shift=1.0, mlp_norm_eps=1e-5)
    load_checkpoint(model, state)
    out = _run(model, _nhwc(x), t, y).transpose(0, 3, 1, 2)
    assert np.max(np.abs(out - expected)) <= 1e-3 * max(1.0, np.max(np.abs(expected)))


def test_timestep_features_and_position_table_match_diffusers():
    pytest.importorskip("diffusers")
    import torch
    from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding

    t = np.array([0, 1, 17, 500, 999], "float32")
    for shift in (0, 1):
        ours = keras.ops.convert_to_numpy(TimestepFrequencies(256, freq_shift=shift)(t))
        ref = get_timestep_embedding(torch.from_numpy(t), 256, flip_sin_to_cos=True,
                                     downscale_freq_shift=shift).numpy()
        assert np.max(np.abs(ours - ref)) < 2e-4
    ref = get_2d_sincos_pos_embed(64, 6, base_size=6, output_type="pt")
    ref = ref.numpy() if hasattr(ref, "numpy") else np.asarray(ref)
    assert np.max(np.abs(sincos_2d_table(64, 6, 6) - ref)) < 1e-6


# --------------------------------------------------------------------------------------
# Checkpoint handling
# --------------------------------------------------------------------------------------


def test_checkpoint_errors_leave_the_model_unchanged():
    torch = pytest.importorskip("torch")
    _, meta, state = _fixture("dit_mini")
    model = dit.DiT(**dit.from_official_config(meta["config"]))
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    broken = dict(state)
    broken.pop("blocks.1.adaLN_modulation.1.weight")
    broken["blocks.0.attn.extra"] = np.zeros(3, "float32")
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, broken)
    assert "blocks.1.adaLN_modulation.1.weight" in str(err.value)
    assert "blocks.0.attn.extra" in str(err.value)
    with pytest.raises(ValueError, match="sine-cosine"):
        load_checkpoint(model, dict(state, pos_embed=state["pos_embed"] + 0.1))
    ref = _diffusers_dit(torch)
    dstate = {k: v.numpy().copy() for k, v in ref.state_dict().items()}
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"
    dstate[key] = dstate[key] + 1
    with pytest.raises(ValueError, match="embedder"):
        load_checkpoint(dit.DiT(**dit.from_diffusers_config(dict(ref.config))), dstate)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), b)


def test_official_pt_and_groupdiff_training_checkpoint_files(tmp_path):
    """The official ``.pt`` is a bare state dict; GroupDiff saves ``{"model": ...,
    "model_ema": ...}`` with the ``denoiser.`` prefix. Both load from files."""
    torch = pytest.importorskip("torch")
    data, meta, state = _fixture("dit_mini")
    path = tmp_path / "DiT-mini.pt"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    model = dit.DiT(**dit.from_official_config(meta["config"]))
    load_checkpoint(model, str(path))
    out = _run(model, _nhwc(data["input"]), data["input_t"], data["input_y"])
    assert np.max(np.abs(out.transpose(0, 3, 1, 2) - data["output"])) <= meta["tolerance"]
    gdata, gmeta, gstate = _fixture("groupdiff_mini")
    gpath = tmp_path / "gdiff.pth"
    tensors = {k: torch.from_numpy(v) for k, v in gstate.items()}
    torch.save({"model": tensors, "model_ema": tensors}, gpath)
    group = dit.DiT(**dit.from_official_config(gmeta["config"]), group_size=3)
    load_checkpoint(group, str(gpath))


def test_registry_and_weight_tags():
    names = list_models("dit_*")
    assert len(names) == 12 and set(names) == {f"dit_{s}_{p}" for s in ("s", "b", "l", "xl")
                                                for p in (2, 4, 8)}
    assert all(get_variant(n).task == "generation" for n in names)
    assert list_models("dit_*", pretrained=True) == ["dit_xl_2"]
    tags = get_variant("dit_xl_2").weights
    assert tags["in1k_256"]["url"].endswith("DiT-XL-2-256x256.pt")
    assert tags["in1k_512"]["url"].endswith("DiT-XL-2-512x512.pt")
    assert "dit_s_2" not in list_models(task="classification")


# Parameter count of the official constructor from its layer shapes. The official
# ``sum(p.numel() for p in model.parameters())`` (675,129,632 for XL/2) also counts the
# frozen ``pos_embed`` parameter, which is a constant here.
def _official_params(depth, width, patch, channels=4, classes=1000):
    block = (4 * width * width + 4 * width            # attention qkv + proj
             + 8 * width * width + 5 * width          # MLP fc1 + fc2
             + 6 * width * width + 6 * width)         # adaLN modulation
    top = (width * channels * patch * patch + width   # patch embedding
           + 256 * width + width + width * width + width  # timestep MLP
           + (classes + 1) * width)                   # label table (+ null class)
    final = 2 * width * width + 2 * width + (width + 1) * patch * patch * 2 * channels
    return depth * block + top + final


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dit_s_2", "dit_b_4", "dit_xl_2"])
def test_parameter_counts_and_gflops(name):
    if BACKEND != FULL_BACKEND:
        pytest.skip(f"counts are backend-independent; run on {FULL_BACKEND}")
    from visionzoo.flops import count_macs

    v = get_variant(name)
    model = visionzoo.create_model(name)
    count = sum(int(np.prod(w.shape)) for w in model.weights)
    c = v.config
    assert count == _official_params(c["depth"], c["hidden_size"], c["patch_size"])
    pos_embed = (32 // c["patch_size"]) ** 2 * c["hidden_size"]
    if name == "dit_xl_2":
        assert count + pos_embed == 675_129_632  # DiT's train.py log for XL/2
    assert round(count / 1e6) == int(v.published["params_m"])
    gflops = count_macs(model) / 1e9
    assert abs(gflops - v.published["gflops"]) <= 0.02 * v.published["gflops"], gflops


# --------------------------------------------------------------------------------------
# Model behaviour
# --------------------------------------------------------------------------------------


def test_group_attention_mixes_only_within_a_group():
    model = dit.DiT(**MINI, group_size=2, max_group_size=3)
    rng = np.random.default_rng(0)
    for w in model.weights:  # adaLN-Zero starts as identity: randomise everything
        w.assign(rng.standard_normal(tuple(w.shape)).astype("float32") * 0.2)
    x = rng.standard_normal((4, 8, 8, 4)).astype("float32")
    t, y, s = np.array([10, 500, 3, 999]), np.array([1, 2, 10, 4]), np.array([0, 2, 1, 0])
    base = _run(model, x, t, y, s)
    x2 = x.copy()
    x2[0] += 1.0
    moved = np.abs(_run(model, x2, t, y, s) - base).reshape(4, -1).max(axis=1)
    assert moved[1] > 1e-3 and moved[2] < 1e-6 and moved[3] < 1e-6, moved


def test_label_dropout_only_in_training():
    model = dit.DiT(**dict(MINI, class_dropout_prob=0.5))
    emb = model.get_layer("y_embedder")
    labels = np.arange(200) % 10
    eval_rows = keras.ops.convert_to_numpy(emb(labels, training=False))
    train_rows = keras.ops.convert_to_numpy(emb(labels, training=True))
    null = keras.ops.convert_to_numpy(emb.embedding_table)[10]
    dropped = np.all(np.isclose(train_rows, null), axis=1)
    assert 0.3 < dropped.mean() < 0.7
    assert not np.any(np.all(np.isclose(eval_rows, null), axis=1))


def test_keras_roundtrip_and_input_checks(tmp_path):
    model = dit.DiT(**MINI, input_shape=(8, 12, 4))
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.standard_normal(tuple(w.shape)).astype("float32") * 0.1)
    x = rng.standard_normal((2, 8, 12, 4)).astype("float32")
    ref = _run(model, x, [5, 900], [3, 10])
    assert ref.shape == (2, 8, 12, 8)
    model.save(tmp_path / "dit.keras")
    loaded = keras.models.load_model(tmp_path / "dit.keras")
    np.testing.assert_allclose(_run(loaded, x, [5, 900], [3, 10]), ref, atol=1e-5)
    assert loaded.get_config() == model.get_config()
    with pytest.raises(ValueError, match="multiple of the patch"):
        dit.DiT(**MINI, input_shape=(9, 8, 4))
    with pytest.raises(ValueError, match="channels"):
        dit.DiT(**MINI, input_shape=(8, 8, 5))
    with pytest.raises(ValueError, match="classifier"):
        dit.DiT(**MINI, pooling="avg")


# --------------------------------------------------------------------------------------
# Diffusion
# --------------------------------------------------------------------------------------


def test_schedule_and_respacing():
    d = GaussianDiffusion()
    assert d.num_timesteps == 1000 and np.isclose(d.betas[0], 1e-4)
    assert np.isclose(d.betas[-1], 0.02)
    steps = space_timesteps(1000, "250")
    assert len(steps) == 250 and steps[:4] == [0, 4, 8, 12] and steps[-1] == 999
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(100, "10,5") == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49, 50, 62, 74,
                                            87, 99]
    r = GaussianDiffusion(timestep_respacing="250")
    # The respaced process keeps the original cumulative products at its steps.
    np.testing.assert_allclose(r.alphas_cumprod, d.alphas_cumprod[r.timestep_map], rtol=1e-12)


class _Oracle:
    """A denoiser that knows x0: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""

    def __init__(self, diffusion, x0, v=0.0):
        self.d, self.x0, self.v = diffusion, x0, v
        self.null_class = 10
        self.abar = GaussianDiffusion().alphas_cumprod  # original steps

    def predict_on_batch(self, inputs):
        x, t = inputs[0].astype("float64"), inputs[1].astype(int)
        a = self.abar[t].reshape(-1, 1, 1, 1)
        x0 = np.concatenate([self.x0] * (len(x) // len(self.x0)))
        eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
        return np.concatenate([eps, np.full_like(eps, self.v)], axis=-1)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_recover_the_data_with_an_oracle(sampler):
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (2, 4, 4, 1))
    d = GaussianDiffusion(timestep_respacing="50")
    out = d.sample(_Oracle(d, x0), labels=[1, 2], shape=(4, 4, 1), sampler=sampler, seed=0,
                   cfg_scale=3.0)
    assert np.max(np.abs(out - x0)) < 1e-4


def test_training_loss_terms_with_known_values():
    d = GaussianDiffusion()
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (3, 4, 4, 2)).astype("float32")
    noise = rng.standard_normal(x0.shape).astype("float32")
    t = np.array([0, 1, 5], "int32")
    x_t = np.asarray(d.q_sample(x0, t, noise), "float32")
    # Perfect noise, variance = the true posterior variance (v = -1): mse 0, KL 0 (t > 0).
    out = np.concatenate([noise, -np.ones_like(noise)], axis=-1)
    mse, vb = (keras.ops.convert_to_numpy(v) for v in d.training_losses(out, x0, x_t, t, noise))
    assert np.max(mse) < 1e-10 and np.max(np.abs(vb[1:])) < 1e-4
    assert vb[0] > 0  # decoder NLL at t = 0
    worse = np.concatenate([noise, np.ones_like(noise)], axis=-1)
    _, vb2 = (keras.ops.convert_to_numpy(v) for v in d.training_losses(worse, x0, x_t, t, noise))
    assert np.all(vb2[1:] > vb[1:] + 1e-3)


def test_fit_lowers_the_loss_and_keeps_an_ema():
    model = dit.DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2,
                    num_heads=2, num_classes=4)
    trainer = DiffusionTrainer(model, seed=0)
    trainer.compile(learning_rate=2e-3, ema_momentum=0.9)
    rng = np.random.default_rng(0)
    y = np.arange(64) % 4
    x = (np.eye(4)[y][:, :, None, None] * np.ones((64, 4, 16, 1)))
    x = (x.reshape(64, 8, 8, 1) * 2 - 1).astype("float32")
    hist = trainer.fit({"images": x, "labels": y}, batch_size=16, epochs=6, verbose=0)
    losses = hist.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    ema = [keras.ops.convert_to_numpy(v) for v in
           trainer.optimizer._model_variables_moving_average]
    # Keras writes the average into the weights when fit() ends.
    for w, e in zip(trainer.trainable_weights, ema):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(w), e, atol=1e-6)
    samples = GaussianDiffusion(timestep_respacing="10").sample(
        model, labels=[0, 3], shape=(8, 8, 1), cfg_scale=2.0, seed=0, clip_denoised=True)
    assert samples.shape == (2, 8, 8, 1) and np.all(np.isfinite(samples))


def test_group_sampling_with_condition_images():
    model = dit.DiT(**MINI, group_size=3, max_group_size=3)
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.standard_normal(tuple(w.shape)).astype("float32") * 0.05)
    d = GaussianDiffusion(timestep_respacing="8")
    known = rng.standard_normal((6, 8, 8, 4))
    mask = np.array([1, 0, 0, 1, 1, 0], "float32").reshape(6, 1, 1, 1)
    ids = np.tile(np.arange(3), 2)
    for mode in ("clean", "renoise"):
        out = d.sample(model, labels=[1, 1, 1, 2, 2, 2], shape=(8, 8, 4), seed=0,
                       cfg_scale=1.5, extra_inputs=[ids], known=known, known_mask=mask,
                       known_mode=mode)
        np.testing.assert_allclose(out[mask[:, 0, 0, 0] > 0], known[mask[:, 0, 0, 0] > 0],
                                   atol=1e-5)
        assert np.all(np.isfinite(out))
    free = d.sample(model, labels=[1, 1, 1, 2, 2, 2], shape=(8, 8, 4), seed=0,
                    cfg_scale=1.5, extra_inputs=[ids])
    assert np.max(np.abs(free[1] - out[1])) > 1e-3  # the conditions change the others
    # Training on groups (N, M, H, W, C): per-image timesteps, whole groups shuffled.
    trainer = DiffusionTrainer(model, seed=0)
    trainer.compile(learning_rate=1e-3, ema_momentum=None)
    hist = trainer.fit({"images": rng.standard_normal((4, 3, 8, 8, 4)).astype("float32"),
                        "labels": rng.integers(0, 10, (4, 3)),
                        "sample_ids": np.tile(np.arange(3), (4, 1))},
                       batch_size=2, epochs=2, verbose=0)
    assert np.all(np.isfinite(hist.history["loss"]))


# --------------------------------------------------------------------------------------
# TFLite
# --------------------------------------------------------------------------------------


def test_tflite_denoiser_step(tmp_path):
    """One denoiser step (the 3-input model) through the public export path, on every
    backend (JAX and torch convert in the TensorFlow-backend subprocess): one signature
    input per model input with its dtype, builtin ops only, fp32 parity checked on
    integer timesteps and labels (the null class included)."""
    from test_export import assert_builtin_only
    from visionzoo.export import example_inputs, to_tflite

    _, meta, state = _fixture("dit_mini")
    model = dit.DiT(**dit.from_official_config(meta["config"]))
    load_checkpoint(model, state)
    side, channels = model.inputs[0].shape[1], model.in_channels

    # The default check inputs: Gaussian latents, integer steps, labels in the table.
    x, t, y = example_inputs(model, batch=64)
    assert x.dtype == t.dtype == np.float32 and y.dtype == np.int32
    assert np.array_equal(t, np.round(t)) and 0 <= t.min() and t.max() < 1000
    assert 0 <= y.min() and y.max() <= model.null_class and len(set(y.tolist())) > 5

    with pytest.raises(ValueError, match="non-integer"):  # before any conversion
        to_tflite(model, tmp_path / "bad.tflite",
                  check_input=[x[:2], t[:2], np.array([0.5, 1.0], "float32")])
    with pytest.raises(ValueError, match="list of 3 arrays"):
        to_tflite(model, tmp_path / "bad.tflite", check_input=x[:2])
    assert list(tmp_path.iterdir()) == []

    path = tmp_path / "dit_step.tflite"
    xc = np.random.default_rng(1).standard_normal((2, side, side, channels)).astype("float32")
    report = to_tflite(model, path, check_input={
        "latents": xc, "timesteps": np.array([3, 999]), "labels": np.array([1, 10])})
    assert report.inputs == [("latents", (None, side, side, channels), "float32"),
                             ("timesteps", (None,), "float32"), ("labels", (None,), "int32")]
    assert report.input_shape == (None, side, side, channels)
    assert 0 < report.max_abs_diff <= 1e-3 * report.ref_max_abs, report.summary()
    assert_builtin_only(report, path)
    assert "GATHER" in report.op_names  # the label table lookup
    assert "inputs latents Bx8x8x4 float32, timesteps B float32, labels B int32" in (
        report.summary())
    assert [p.name for p in tmp_path.iterdir()] == [path.name]

    # Independent run at another batch size through the signature runner by name.
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, side, side, channels)).astype("float32")
    t, y = np.array([0.0, 417.0, 999.0], "float32"), np.array([1, 10, 7], "int32")
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    got = runner(latents=x, timesteps=t, labels=y)
    assert list(got) == ["output_0"]
    ref = _run(model, x, t, y)
    diff = np.max(np.abs(got["output_0"] - ref))
    assert diff <= 1e-4 * np.max(np.abs(ref)), diff
