"""Gaussian diffusion for DiT-style denoisers: schedule, respacing, samplers, training.

    from visionzoo.training.diffusion import GaussianDiffusion, DiffusionTrainer

    diffusion = GaussianDiffusion()                      # linear betas, 1000 steps
    trainer = DiffusionTrainer(denoiser, diffusion)      # denoiser: [x, t, y] -> 2C channels
    trainer.compile()                                    # AdamW 1e-4, EMA 0.9999
    trainer.fit({"images": x0, "labels": y}, batch_size=256, epochs=...)
    samples = GaussianDiffusion(timestep_respacing="250").sample(
        denoiser, labels=[207, 360], shape=(32, 32, 4), cfg_scale=4.0, seed=0)

This follows the improved-DDPM / ADM diffusion used by facebookresearch/DiT
(``diffusion/gaussian_diffusion.py``, ``respace.py``), rewritten for Keras:

- **Schedule.** Linear betas ``1e-4 -> 0.02`` over 1000 steps (scaled by
  ``1000 / num_timesteps`` for other step counts); every table in float64.
- **Learned variance** (``LEARNED_RANGE``): the denoiser's extra channels ``v`` in
  ``[-1, 1]`` interpolate the log-variance between the clipped posterior variance
  (``v = -1``) and ``beta_t`` (``v = 1``). Without learned sigma the fixed "large"
  variance is used.
- **Respacing** (:func:`space_timesteps`): ``"250"`` keeps 250 evenly strided steps,
  ``"10,15,20"`` strides sections, ``"ddim50"`` uses DDIM's integer stride. The respaced
  process has its own betas ``1 - abar_i / abar_prev``; the denoiser always receives the
  original step index (``timestep_map``), as the official ``_WrappedModel`` does.
- **Samplers** (:meth:`GaussianDiffusion.sample`): ancestral DDPM (``p_sample_loop``) and
  DDIM (``eta`` = 0 deterministic). Classifier-free guidance runs the conditional and
  null-label batches together and mixes the noise prediction
  ``uncond + scale * (cond - uncond)``; the variance channels come from the conditional
  half. ``guidance_channels`` limits guidance to the first channels (the official DiT
  ``forward_with_cfg`` guides 3 of the 4 latent channels; see :func:`cfg_forward`).
  Known images/pixels can be imposed at every step (inpainting-style replacement), which
  is how a group denoiser samples a group with some images given as conditions.
- **Training objective** (:class:`DiffusionTrainer`): ``t ~ U{0..T-1}``, ``x_t =
  sqrt(abar) x0 + sqrt(1 - abar) eps``; loss = mean over pixels of ``(eps - eps_hat)^2``
  plus, with learned sigma, the variational-bound term in bits per dimension
  (KL between the true and predicted posteriors; the discretised decoder NLL at
  ``t = 0``) computed with the predicted mean frozen (stop-gradient), so it trains the
  variance only. Averaged over the batch.
- **EMA.** :meth:`DiffusionTrainer.compile` builds AdamW (lr 1e-4, no weight decay, as
  DiT) with Keras' optimizer EMA (``use_ema=True``, ``ema_momentum`` 0.9999). Keras'
  semantics apply: the average is updated after every step and, when ``fit()`` ends,
  written into the model's weights (so after ``fit`` the denoiser holds the EMA weights).

Sampling runs a Python loop over steps; each step calls the denoiser once through
``predict_on_batch`` (compiled by the backend) and does the update in NumPy.
"""

import math

import keras
import numpy as np
from keras import ops

# --------------------------------------------------------------------------------------
# Schedules and respacing
# --------------------------------------------------------------------------------------


def linear_betas(num_timesteps=1000):
    """DDPM's linear schedule, ``1e-4 -> 0.02`` for 1000 steps (scaled for others)."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps=1000, max_beta=0.999):
    """Improved-DDPM's ``squaredcos_cap_v2`` schedule."""
    def abar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), max_beta)
                     for i in range(num_timesteps)], dtype=np.float64)


def space_timesteps(num_timesteps, section_counts):
    """The sorted original step indices kept by a respacing.

    Args:
        num_timesteps: int. Steps of the original process.
        section_counts: int, list of ints, or str: ``"250"``, ``"10,15,20"`` (the
            original steps are cut into equal sections, each strided to its count, with
            fractional strides rounded), or ``"ddimN"`` (the integer stride giving
            exactly N steps, as in the DDIM paper).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            wanted = int(section_counts[4:])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == wanted:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"No integer stride gives exactly {wanted} of {num_timesteps} "
                             "steps.")
        section_counts = [int(s) for s in section_counts.split(",")]
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    per, extra = divmod(num_timesteps, len(section_counts))
    kept, start = [], 0
    for i, count in enumerate(section_counts):
        size = per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"Cannot take {count} steps from a section of {size}.")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(kept))


# --------------------------------------------------------------------------------------
# The process
# --------------------------------------------------------------------------------------


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + ops.exp(logvar1 - logvar2)
                  + ops.square(mean1 - mean2) * ops.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def _discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of data in [-1, 1] quantised to 256 levels (ADM's decoder)."""
    centred = x - means
    inv_std = ops.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = ops.log(ops.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = ops.log(ops.maximum(1.0 - cdf_min, 1e-12))
    cdf_delta = cdf_plus - cdf_min
    mid = ops.log(ops.maximum(cdf_delta, 1e-12))
    return ops.where(x < -0.999, log_cdf_plus,
                     ops.where(x > 0.999, log_one_minus_cdf_min, mid))


class GaussianDiffusion:
    """A Gaussian diffusion process (optionally respaced) with epsilon prediction.

    Args:
        betas: 1-D array or None. Betas of the original process (default: linear).
        num_timesteps: int. Original steps when ``betas`` is None (1000).
        schedule: "linear" or "cosine", when ``betas`` is None.
        timestep_respacing: None/"" (all steps) or a :func:`space_timesteps` spec.
        learn_sigma: bool. The denoiser outputs ``2C`` channels (noise + ``v``).
    """

    def __init__(self, betas=None, num_timesteps=1000, schedule="linear",
                 timestep_respacing=None, learn_sigma=True):
        if betas is None:
            if schedule == "linear":
                betas = linear_betas(num_timesteps)
            elif schedule == "cosine":
                betas = cosine_betas(num_timesteps)
            else:
                raise ValueError(f"Unknown schedule {schedule!r}; expected 'linear' or "
                                 "'cosine'.")
        base = np.asarray(betas, np.float64)
        if base.ndim != 1 or not ((base > 0) & (base <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1].")
        self.base_betas = base
        self.original_num_steps = len(base)
        self.learn_sigma = learn_sigma
        self.timestep_respacing = timestep_respacing
        if timestep_respacing in (None, ""):
            kept = list(range(len(base)))
        else:
            kept = space_timesteps(len(base), timestep_respacing)
        abar = np.cumprod(1.0 - base)
        new_betas, last = [], 1.0
        for i in kept:
            new_betas.append(1.0 - abar[i] / last)
            last = abar[i]
        self.timestep_map = np.asarray(kept, np.int64)
        self._set_tables(np.asarray(new_betas, np.float64))

    def _set_tables(self, betas):
        self.betas = betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (
            1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0: its log is clipped to the t = 1 value.
        self.posterior_log_variance_clipped = (
            np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
            if len(betas) > 1 else np.log(betas))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (
            1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (
            1.0 - self.alphas_cumprod)
        large = np.append(self.posterior_variance[1], betas[1:]) if len(betas) > 1 else betas
        self.fixed_log_variance = np.log(large)

    def respace(self, timestep_respacing):
        """The same original process with another respacing."""
        return GaussianDiffusion(self.base_betas, timestep_respacing=timestep_respacing,
                                 learn_sigma=self.learn_sigma)

    # ------------------------------------------------------------------ NumPy side
    @staticmethod
    def _at(table, t, ndim):
        v = np.asarray(table)[np.asarray(t)]
        return v.reshape(v.shape + (1,) * (ndim - v.ndim))

    def q_sample(self, x_start, t, noise):
        """``x_t`` from ``x_0`` (NumPy; ``t`` indexes this, possibly respaced, process)."""
        x_start = np.asarray(x_start, np.float64)
        return (self._at(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise)

    def p_mean_variance(self, model_output, x, t, clip_denoised=False):
        """Mean, log-variance and ``x_0`` prediction of ``p(x_{t-1} | x_t)`` (NumPy, NHWC).

        ``model_output`` has ``2C`` channels with learned sigma (``[:C]`` noise, ``[C:]``
        ``v``), else ``C``.
        """
        x = np.asarray(x, np.float64)
        out = np.asarray(model_output, np.float64)
        c = x.shape[-1]
        if self.learn_sigma:
            if out.shape[-1] != 2 * c:
                raise ValueError(f"Expected {2 * c} output channels (learned sigma), got "
                                 f"{out.shape[-1]}.")
            eps, v = out[..., :c], out[..., c:]
            min_log = self._at(self.posterior_log_variance_clipped, t, x.ndim)
            max_log = self._at(np.log(self.betas), t, x.ndim)
            frac = (v + 1.0) / 2.0
            log_var = frac * max_log + (1.0 - frac) * min_log
        else:
            eps = out[..., :c]
            log_var = self._at(self.fixed_log_variance, t, x.ndim) + np.zeros_like(x)
        pred_x0 = (self._at(self.sqrt_recip_alphas_cumprod, t, x.ndim) * x
                   - self._at(self.sqrt_recipm1_alphas_cumprod, t, x.ndim) * eps)
        if clip_denoised:
            pred_x0 = np.clip(pred_x0, -1.0, 1.0)
        mean = (self._at(self.posterior_mean_coef1, t, x.ndim) * pred_x0
                + self._at(self.posterior_mean_coef2, t, x.ndim) * x)
        return {"mean": mean, "log_variance": log_var, "pred_xstart": pred_x0}

    def ddpm_step(self, model_output, x, t, noise, clip_denoised=False):
        """One ancestral step ``x_t -> x_{t-1}`` (no noise at ``t = 0``)."""
        out = self.p_mean_variance(model_output, x, t, clip_denoised)
        nonzero = self._at(np.asarray(t) != 0, np.arange(np.size(t)), x.ndim)
        sample = out["mean"] + nonzero * np.exp(0.5 * out["log_variance"]) * noise
        return sample, out["pred_xstart"]

    def ddim_step(self, model_output, x, t, noise, eta=0.0, clip_denoised=False):
        """One DDIM step (Song et al., eq. 12) from the model's ``x_0`` prediction."""
        x = np.asarray(x, np.float64)
        out = self.p_mean_variance(model_output, x, t, clip_denoised)
        pred_x0 = out["pred_xstart"]
        eps = (self._at(self.sqrt_recip_alphas_cumprod, t, x.ndim) * x - pred_x0) / \
            self._at(self.sqrt_recipm1_alphas_cumprod, t, x.ndim)
        abar = self._at(self.alphas_cumprod, t, x.ndim)
        abar_prev = self._at(self.alphas_cumprod_prev, t, x.ndim)
        sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar)) * np.sqrt(1 - abar / abar_prev)
        mean = pred_x0 * np.sqrt(abar_prev) + np.sqrt(1 - abar_prev - sigma ** 2) * eps
        nonzero = self._at(np.asarray(t) != 0, np.arange(np.size(t)), x.ndim)
        return mean + nonzero * sigma * noise, pred_x0

    def sample(self, model, labels, shape=None, *, noise=None, sampler="ddpm", eta=0.0,
               cfg_scale=1.0, null_class=None, guidance_channels=None, clip_denoised=False,
               seed=None, extra_inputs=(), known=None, known_mask=None,
               known_mode="renoise", progress=False, return_intermediates=False):
        """Draw samples from a denoiser ``model([x, t, labels, *extra_inputs])`` (NHWC).

        Args:
            model: a Keras denoiser with inputs ``[latents, timesteps, labels, ...]``.
            labels: ``(B,)`` int class labels (the null class gives unconditional samples).
            shape: (H, W, C) of one sample (or pass ``noise``).
            noise: ``(B, H, W, C)`` starting noise ``x_T`` or None (seeded normal).
            sampler: "ddpm" (ancestral) or "ddim".
            eta: float. DDIM stochasticity (0: deterministic).
            cfg_scale: float. Classifier-free guidance scale; 1 disables it (one pass).
            null_class: int. The null label (default ``model.null_class``).
            guidance_channels: int or None. Guide only ``eps[..., :n]`` (None: all noise
                channels; 3 reproduces the official DiT ``forward_with_cfg``).
            clip_denoised: bool. Clip the ``x_0`` prediction to [-1, 1] (pixel-space
                models; DiT's latent sampling does not).
            seed: int or None. NumPy seed of the noise.
            extra_inputs: further per-sample model inputs (GroupDiff ``sample_ids``),
                duplicated for the guidance batch.
            known: array like the samples or None. Values imposed where ``known_mask`` is 1.
            known_mask: array broadcastable to the samples (``(B, 1, 1, 1)`` for whole
                images of a group; ``(B, H, W, 1)`` for pixels).
            known_mode: "renoise" (replace by ``q_sample(known, t)`` before each step, the
                inpainting replacement) or "clean" (whole known images only: give them
                clean at timestep 0 every step, as condition images of a group).
            return_intermediates: bool. Also return the list of ``x_0`` predictions.

        Returns:
            ``(B, H, W, C)`` float32 samples (and the predictions).
        """
        rng = np.random.default_rng(seed)
        labels = np.asarray(labels, np.int32).reshape(-1)
        b = len(labels)
        if noise is None:
            if shape is None:
                raise ValueError("Pass shape=(H, W, C) or noise.")
            noise = rng.standard_normal((b,) + tuple(shape))
        x = np.asarray(noise, np.float64)
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}.")
        if known is not None:
            known = np.asarray(known, np.float64)
            mask = np.broadcast_to(np.asarray(known_mask, np.float64), x.shape)
            if known_mode == "clean":
                image_mask = mask.reshape(b, -1)
                if not np.all((image_mask == image_mask[:, :1])):
                    raise ValueError("known_mode='clean' needs whole images (a (B, 1, 1, 1) "
                                     "mask).")
                clean_rows = image_mask[:, 0] > 0.5
            elif known_mode != "renoise":
                raise ValueError("known_mode must be 'renoise' or 'clean'.")
        guided = cfg_scale != 1.0
        if guided:
            null = getattr(model, "null_class", None) if null_class is None else null_class
            if null is None:
                raise ValueError("Classifier-free guidance needs null_class.")
            all_labels = np.concatenate([labels, np.full_like(labels, null)])
            extras = [np.concatenate([np.asarray(e)] * 2) for e in extra_inputs]
        else:
            all_labels, extras = labels, [np.asarray(e) for e in extra_inputs]
        c = x.shape[-1]
        steps = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps)
        preds = []
        for i in steps:
            t = np.full((b,), i, np.int64)
            model_t = np.full((b,), self.timestep_map[i], np.float32)
            if known is not None:
                if known_mode == "renoise":
                    x = mask * self.q_sample(known, t, rng.standard_normal(x.shape)) + \
                        (1 - mask) * x
                else:
                    x = mask * known + (1 - mask) * x
                    model_t = np.where(clean_rows, 0.0, model_t).astype(np.float32)
            xin = np.concatenate([x, x]) if guided else x
            tin = np.concatenate([model_t, model_t]) if guided else model_t
            out = model.predict_on_batch([xin.astype(np.float32), tin,
                                          all_labels.astype(np.int32)] + extras)
            out = np.asarray(keras.ops.convert_to_numpy(out), np.float64)
            if guided:
                out = guide(out[:b], out[b:], cfg_scale, c, guidance_channels)
            step_noise = rng.standard_normal(x.shape)
            if sampler == "ddpm":
                x, pred = self.ddpm_step(out, x, t, step_noise, clip_denoised)
            else:
                x, pred = self.ddim_step(out, x, t, step_noise, eta, clip_denoised)
            if return_intermediates:
                preds.append(pred.astype(np.float32))
        if known is not None:
            x = mask * known + (1 - mask) * x
        x = x.astype(np.float32)
        return (x, preds) if return_intermediates else x

    # ------------------------------------------------------------------ Keras side
    def _table(self, name):
        return ops.convert_to_tensor(np.asarray(getattr(self, name), np.float32))

    def _gather(self, name, t, ndim):
        v = ops.take(self._table(name), t, axis=0)
        return ops.reshape(v, (-1,) + (1,) * (ndim - 1))

    def q_sample_tensor(self, x_start, t, noise):
        """``x_t`` from ``x_0`` with backend tensors (``t`` int32 of this process)."""
        nd = len(x_start.shape)
        return (self._gather("sqrt_alphas_cumprod", t, nd) * x_start
                + self._gather("sqrt_one_minus_alphas_cumprod", t, nd) * noise)

    def training_losses(self, model_output, x_start, x_t, t, noise):
        """Per-sample ``(mse, vb)`` (backend tensors; ``vb`` is 0 without learned sigma).

        ``model_output`` is the denoiser's output on ``x_t`` (NHWC), ``t`` the step index
        of this process.
        """
        model_output, x_start, x_t, noise = (ops.convert_to_tensor(v, "float32") for v in
                                             (model_output, x_start, x_t, noise))
        t = ops.convert_to_tensor(t, "int32")
        nd = len(x_start.shape)
        c = x_start.shape[-1]
        axes = tuple(range(1, nd))
        eps = model_output[..., :c]
        mse = ops.mean(ops.square(noise - eps), axis=axes)
        if not self.learn_sigma:
            return mse, ops.zeros_like(mse)
        v = model_output[..., c:]
        frozen = ops.stop_gradient(eps)
        min_log = self._gather("posterior_log_variance_clipped", t, nd)
        max_log = ops.log(self._gather("betas", t, nd))
        frac = (v + 1.0) / 2.0
        log_var = frac * max_log + (1.0 - frac) * min_log
        pred_x0 = (self._gather("sqrt_recip_alphas_cumprod", t, nd) * x_t
                   - self._gather("sqrt_recipm1_alphas_cumprod", t, nd) * frozen)
        coef1 = self._gather("posterior_mean_coef1", t, nd)
        coef2 = self._gather("posterior_mean_coef2", t, nd)
        mean = coef1 * pred_x0 + coef2 * x_t
        true_mean = coef1 * x_start + coef2 * x_t
        true_log_var = min_log
        kl = ops.mean(_normal_kl(true_mean, true_log_var, mean, log_var), axis=axes) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x_start, mean, 0.5 * log_var)
        nll = ops.mean(nll, axis=axes) / math.log(2.0)
        vb = ops.where(ops.equal(t, 0), nll, kl)
        return mse, vb


def guide(cond, uncond, scale, channels, guidance_channels=None):
    """Classifier-free guidance of a ``(B, H, W, 2C)`` (or ``C``) prediction pair.

    ``eps = uncond + scale * (cond - uncond)`` on the first ``guidance_channels`` noise
    channels (all ``channels`` by default); the other channels, including the learned
    variance, are the conditional prediction's.
    """
    n = channels if guidance_channels is None else guidance_channels
    xp = np if isinstance(cond, np.ndarray) else ops
    mixed = uncond[..., :n] + scale * (cond[..., :n] - uncond[..., :n])
    return xp.concatenate([mixed, cond[..., n:]], axis=-1)


def cfg_forward(model, x, t, y, cfg_scale, guidance_channels=3):
    """The official DiT ``forward_with_cfg`` on NHWC inputs (NumPy in, NumPy out).

    ``x``'s first half is duplicated, the model runs on ``[x_half, x_half]`` with
    ``t``/``y`` as given (labels: conditional half then null half), and the first
    ``guidance_channels`` channels (3 in the official code) of both halves become the
    guided noise; the remaining channels stay the raw conditional/unconditional outputs.
    """
    x = np.asarray(x, np.float32)
    half = x[: len(x) // 2]
    out = model.predict_on_batch([np.concatenate([half, half]), np.asarray(t, np.float32),
                                  np.asarray(y, np.int32)])
    out = np.asarray(keras.ops.convert_to_numpy(out))
    n = len(out) // 2
    eps, rest = out[..., :guidance_channels], out[..., guidance_channels:]
    mixed = eps[n:] + cfg_scale * (eps[:n] - eps[n:])
    return np.concatenate([np.concatenate([mixed, mixed]), rest], axis=-1)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="visionzoo")
class DiffusionTrainer(keras.Model):
    """Trains a denoiser with the DiT objective through ``fit()``.

    ``fit`` takes ``{"images": x0, "labels": y}`` (NHWC ``x0``, int labels) and no
    targets. For a group denoiser (``group_size`` M) pass groups: ``images``
    ``(N, M, H, W, C)``, ``labels`` and ``sample_ids`` ``(N, M)`` (so that ``fit``'s
    shuffling moves whole groups); each image gets its own timestep. Each step draws ``t`` uniformly, noises ``x0`` and minimises
    ``mean(mse + vb)`` (:meth:`GaussianDiffusion.training_losses`). The denoiser is
    called with ``training=True``, so its label embedding drops labels to the null class
    (``class_dropout_prob``) for classifier-free guidance.

    Args:
        denoiser: Keras model ``[x_t, t, labels] -> prediction``.
        diffusion: :class:`GaussianDiffusion` (default: linear, 1000 steps, learned sigma
            if the denoiser outputs twice its input channels).
        seed: int or None. Seed of the timestep/noise generator.
    """

    def __init__(self, denoiser, diffusion=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.denoiser = denoiser
        if diffusion is None:
            learn = denoiser.output.shape[-1] == 2 * denoiser.inputs[0].shape[-1]
            diffusion = GaussianDiffusion(learn_sigma=learn)
        self.diffusion = diffusion
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def compile(self, optimizer=None, ema_momentum=0.9999, learning_rate=1e-4, **kwargs):
        """Default optimizer: AdamW(``learning_rate``, weight decay 0) with EMA of the
        weights (``ema_momentum``; None disables it).

        The average starts from the weights after the first step, so pick a momentum
        whose ``momentum ** steps`` is small for the run: 0.9999 (DiT, 400K steps) needs
        well over 10^4 steps; a run of ~10^3 steps wants about 0.995.
        """
        if optimizer is None:
            optimizer = keras.optimizers.AdamW(
                learning_rate=learning_rate, weight_decay=0.0,
                use_ema=ema_momentum is not None, ema_momentum=ema_momentum or 0.99)
        super().compile(optimizer=optimizer, **kwargs)

    def call(self, inputs, training=False):
        x0 = ops.cast(inputs["images"], "float32")
        labels = inputs["labels"]
        extra = [inputs[k] for k in ("sample_ids",) if k in inputs]
        if len(x0.shape) == 5:  # groups (N, M, H, W, C) -> the (N*M) image batch
            x0 = ops.reshape(x0, (-1,) + tuple(x0.shape[2:]))
            labels = ops.reshape(labels, (-1,))
            extra = [ops.reshape(e, (-1,)) for e in extra]
        batch = ops.shape(x0)[0]
        t = keras.random.randint((batch,), 0, self.diffusion.num_timesteps, dtype="int32",
                                 seed=self.seed_generator)
        noise = keras.random.normal(ops.shape(x0), seed=self.seed_generator)
        x_t = self.diffusion.q_sample_tensor(x0, t, noise)
        model_t = ops.take(ops.convert_to_tensor(
            self.diffusion.timestep_map.astype(np.float32)), t, axis=0)
        out = self.denoiser([x_t, model_t, ops.cast(labels, "int32")] + extra,
                            training=training)
        return {"output": out, "images": x0, "x_t": x_t, "t": t, "noise": noise}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        mse, vb = self.diffusion.training_losses(y_pred["output"], y_pred["images"],
                                                 y_pred["x_t"], y_pred["t"], y_pred["noise"])
        loss = ops.mean(mse + vb)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def get_config(self):
        return {"name": self.name, "seed": self.seed,
                "denoiser": keras.saving.serialize_keras_object(self.denoiser)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["denoiser"] = keras.saving.deserialize_keras_object(config["denoiser"])
        return cls(**config)
