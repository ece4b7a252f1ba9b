"""Conditional WGAN-GP for calorimeter images and the CNN regressor that constrains it (BESIII EMC seed).

The generator follows the seed's layer sequence: ``[noise, conditions] -> Dense(16 x 4 x 4) -> upsample x 3
(12 x 12) -> convolutions 16, 16, 16, 8 -> a valid 2 x 2 convolution to 1 channel (12 x 12 -> 11 x 11, so no
crystal is cropped away: every output crystal sees a 2 x 2 patch of the upsampled features) -> ReLU``, or
(``model.output: threshold``) the readout's zero suppression ``E = t exp(log_gain * h)`` where that is >= the
per-row threshold t (``model.zero_suppression`` in physical units), else exactly 0. Its
output is the image in model space (after ``data.image`` preprocessing, e.g. the fraction of the incident
momentum in each crystal), flattened, so the one sampler graph decodes it to MeV.

The critic scores (image, conditions) -- the image in model units, or (``model.critic_input: log``) as
ln(1 + x / t), where the gradient penalty then also acts: convolutions on the image (and on ln(x + eps) as a second channel, so
low-energy crystals count), a dense layer, minibatch discrimination (Salimans et al. 2016, arXiv:1606.03498),
then the features concatenated with the conditions, the total energy and a sparsity measure -> one score.
Training is WGAN-GP (Gulrajani et al. 2017, arXiv:1704.00028): ``n_critic`` critic steps on slices of each batch
with the gradient penalty ``gp_weight * E[(|grad D(x_hat)|_2 - 1)^2]``, then one generator step with loss
``-E[D(G(z, y), y)] + regressor_weight * E|y_r - R(G(z, y))|_1`` where R is a frozen, separately trained
:class:`ImageRegressor` (``model.regressor_run``) that reads (mom, dtheta_mom, dphi_mom) back from the image.

Both are :class:`detgen.models.base.ModelFamily` s driven by the one trainer (``make_optimizers`` gives the
generator and critic Adam optimisers, ``train_step`` the alternating updates); checkpoints hold both optimisers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from detgen.errors import ConfigError, DataError
from detgen.models.base import ModelFamily, optimizer_step
from detgen.validation.metrics import separation_in_truth_range


# ------------------------------------------------------------------------------------------ config checks
def check_gan_config(config: Any, data: Any, source: str) -> None:
    """ConfigError for GAN settings that cannot work (called when the config is loaded)."""
    if len(config.image_shape) != 2 or min(config.image_shape) < 1:
        raise ConfigError(f"{source}: model.image_shape = {config.image_shape} (expected [height, width])")
    if len(config.dense_shape) != 3 or min(config.dense_shape) < 1:
        raise ConfigError(f"{source}: model.dense_shape = {config.dense_shape} (expected [channels, height, width])")
    up_h, up_w = config.dense_shape[1] * config.upsample, config.dense_shape[2] * config.upsample
    if up_h < config.image_shape[0] or up_w < config.image_shape[1]:
        raise ConfigError(
            f"{source}: model.dense_shape {config.dense_shape} upsampled x{config.upsample} is {up_h} x {up_w}, "
            f"smaller than model.image_shape {config.image_shape}"
        )
    if any(c < 1 for c in config.coarse_channels):
        raise ConfigError(f"{source}: model.coarse_channels = {config.coarse_channels} (expected positive numbers)")
    if not config.generator_channels or config.generator_channels[-1] != 1:
        raise ConfigError(f"{source}: model.generator_channels must end with 1 (one image channel)")
    if config.kernel_size % 2 != 1:
        raise ConfigError(f"{source}: model.kernel_size = {config.kernel_size} (expected an odd number)")
    if not config.critic_channels or config.critic_features < 1 or config.n_critic < 1:
        raise ConfigError(f"{source}: model.critic_channels, critic_features and n_critic must be non-empty/positive")
    if len(config.betas) != 2 or not all(0 <= b < 1 for b in config.betas):
        raise ConfigError(f"{source}: model.betas = {config.betas} (expected two numbers in [0, 1))")
    if (config.regressor_run is None) != (config.regressor_weight == 0):
        raise ConfigError(
            f"{source}: model.regressor_run and model.regressor_weight go together (got regressor_run "
            f"{config.regressor_run!r}, regressor_weight {config.regressor_weight})"
        )
    if data.group_by is not None:
        raise ConfigError(f"{source}: family gan trains one model; data.group_by is not supported (select one "
                          "group with data.select, or make the group a condition)")
    if data.image.normalise == "total":
        raise ConfigError(f"{source}: family gan needs data.image.normalise none or condition (total adds a "
                          "non-pixel feature the convolutional generator cannot produce)")
    if config.output not in OUTPUTS:
        raise ConfigError(f"{source}: model.output = {config.output!r} (expected one of {', '.join(OUTPUTS)})")
    if config.validation not in VALIDATIONS:
        raise ConfigError(f"{source}: model.validation = {config.validation!r} (expected one of "
                          f"{', '.join(VALIDATIONS)})")
    if config.gate_temperature < 0 or not config.log_gain > 0:
        raise ConfigError(f"{source}: model.gate_temperature = {config.gate_temperature} (expected >= 0) and "
                          f"model.log_gain = {config.log_gain} (expected > 0)")
    if config.output == "threshold":
        if not config.zero_suppression > 0:
            raise ConfigError(f"{source}: model.output threshold needs model.zero_suppression > 0 (the readout "
                              f"threshold per pixel in the image's physical units, e.g. 0.5 MeV); got "
                              f"{config.zero_suppression}")
        if data.image.transform != "none":
            raise ConfigError(f"{source}: model.output threshold makes energies itself (E = t exp(u)); it needs "
                              f"data.image.transform none, got {data.image.transform!r}")
        if config.output_leak > 0:
            raise ConfigError(f"{source}: model.output_leak is for output relu; output threshold has its own "
                              "gradient below the cut")
    if config.output_knots and (config.output != "threshold" or config.output_knots < 1
                                or not config.output_knot_range > 0):
        raise ConfigError(f"{source}: model.output_knots needs model.output threshold, output_knots >= 1 and "
                          f"output_knot_range > 0; got output {config.output!r}, output_knots "
                          f"{config.output_knots}, output_knot_range {config.output_knot_range}")
    if config.readout_noise < 0 or (config.readout_noise > 0 and config.output != "threshold"):
        raise ConfigError(f"{source}: model.readout_noise = {config.readout_noise} (expected >= 0; > 0 needs model."
                          f"output threshold, whose cut decides which noise hits are kept); output {config.output!r}")
    if config.critic_input not in ("linear", "log"):
        raise ConfigError(f"{source}: model.critic_input = {config.critic_input!r} (expected linear or log)")
    if config.critic_total not in ("log", "energy"):
        raise ConfigError(f"{source}: model.critic_total = {config.critic_total!r} (expected log or energy)")
    if config.total_energy not in ("free", "head"):
        raise ConfigError(f"{source}: model.total_energy = {config.total_energy!r} (expected free or head)")
    if config.total_energy == "head":
        if config.output != "threshold":
            raise ConfigError(f"{source}: model.total_energy head rescales the map before the zero suppression; it "
                              "needs model.output threshold")
        if not 1 <= config.energy_noise <= config.noise_dim or not config.energy_weight > 0 or any(
                w < 1 for w in config.energy_hidden):
            raise ConfigError(f"{source}: model.energy_noise must be in [1, noise_dim = {config.noise_dim}], "
                              f"energy_weight > 0 and energy_hidden positive widths (got {config.energy_noise}, "
                              f"{config.energy_weight}, {config.energy_hidden})")
    if config.critic_hit_levels and (config.critic_input != "log" or not config.critic_hit_softness > 0
                                     or min(config.critic_hit_levels) <= 0):
        raise ConfigError(f"{source}: model.critic_hit_levels needs model.critic_input log, levels > 0 (E / t) and "
                          f"critic_hit_softness > 0; got {config.critic_hit_levels}, {config.critic_hit_softness}")
    if config.critic_input == "log" and config.output != "threshold":
        raise ConfigError(f"{source}: model.critic_input log needs model.output threshold (its scale is the "
                          "zero-suppression threshold)")


def check_regressor_config(config: Any, data: Any, source: str) -> None:
    if len(config.image_shape) != 2 or min(config.image_shape) < 1:
        raise ConfigError(f"{source}: model.image_shape = {config.image_shape} (expected [height, width])")
    for column in config.predict:
        if column not in data.conditions or column in data.categorical:
            raise ConfigError(f"{source}: model.predict names {column!r}, which is not a numeric condition "
                              f"(data.conditions: {', '.join(data.conditions)})")
    if not config.predict or len(config.conv_channels) < 1:
        raise ConfigError(f"{source}: model.predict and model.conv_channels must not be empty")
    if config.loss not in ("l1", "mse"):
        raise ConfigError(f"{source}: model.loss = {config.loss!r} (expected l1 or mse)")
    if data.image.normalise == "total":
        raise ConfigError(f"{source}: family regressor needs data.image.normalise none or condition")


def _check_pixels(n_targets: int, image_shape: list[int], family: str) -> None:
    if n_targets != math.prod(image_shape):
        raise ConfigError(
            f"model.family {family}: the targets have {n_targets} features in model space but model.image_shape "
            f"{image_shape} has {math.prod(image_shape)} pixels (the target must be one image column of that shape)"
        )


def condition_positions(preprocessor: Any, columns: list[str]) -> list[int]:
    """Positions of numeric condition ``columns`` in the encoded conditions (one-hot blocks take several)."""
    positions, offset = {}, 0
    for spec in preprocessor.condition_specs:
        positions[spec["column"]] = offset
        offset += len(spec["categories"]) if spec["kind"] == "onehot" else 1
    return [positions[c] for c in columns]


OUTPUTS = ("relu", "threshold")
VALIDATIONS = ("critic", "showers")


# ------------------------------------------------------------------------------------------ networks
def upsample_fold(r: int, kernel: int) -> Tensor:
    """S[a, p, d] = 1 where a fine row at sub-position a (of r) plus kernel offset d lands in coarse row offset p.

    A k x k convolution (padding k // 2) after a nearest upsampling by r equals a convolution on the coarse map
    with r^2 times the output channels, K[o, a, b] = sum_{dy, dx} S[a, p, dy] S[b, q, dx] W[o, dy, dx], followed
    by a pixel shuffle: the fine map repeats each coarse value r x r times, so a fine window touches only the
    coarse neighbours within ceil((k // 2) / r); zero padding agrees because the fine size is r times the coarse.
    """
    half = kernel // 2
    reach = -(-half // r)
    fold = torch.zeros(r, 2 * reach + 1, kernel)
    for a in range(r):
        for d in range(-half, half + 1):
            fold[a, (a + d) // r + reach, d + half] = 1.0
    return fold


def shuffle_fold(r: int, kernel: int) -> Tensor:
    """T[a, s, p, d] = 1 where output sub-position a plus valid-kernel offset d (0..k-1) reads the fine row at
    sub-position s of coarse row offset p: a valid k x k convolution of a pixel-shuffled map, done before the
    shuffle on its r^2 x channels (K[a, b, c, s, t] = sum T[a, s, p, dy] T[b, t, q, dx] W[c, dy, dx])."""
    reach = (r - 1 + kernel - 1) // r + 1
    fold = torch.zeros(r, r, reach, kernel)
    for a in range(r):
        for d in range(kernel):
            fold[a, (a + d) % r, (a + d) // r, d] = 1.0
    return fold


class ShowerGenerator(nn.Module):
    """(noise, encoded conditions) -> flattened image in model space (plain tensor ops; the exported graph)."""

    energy_location: Tensor  # buffers of the total_energy head (only with model.total_energy: head)
    upsample_fold: Tensor  # constants of the folded convolutions (fold_first, fold_last)
    shuffle_fold: Tensor
    shuffle_fold_x: Tensor
    energy_scale: Tensor

    def __init__(self, *, noise_dim: int, n_conditions: int, config: Any):
        super().__init__()
        channels, height, width = config.dense_shape
        self.dense_shape = (channels, height, width)
        self.dense = nn.Linear(noise_dim + n_conditions, channels * height * width)
        self.upsample = int(config.upsample)
        self.output_leak = float(config.output_leak)
        self.latent_dim = noise_dim  # noise columns the dense layer reads; the rest are the readout's (readout_noise)
        self.readout_ratio = float(config.readout_noise) / float(config.zero_suppression) if config.readout_noise else 0.0
        self.output = str(config.output)
        self.zero_suppression = float(config.zero_suppression)
        self.gate_temperature = float(config.gate_temperature)
        self.log_gain = float(config.log_gain)
        #: (encoded position of the normalising condition or -1, its shift, scale, is_log, image scale): set by
        #: :meth:`bind_threshold` from the preprocessing; plain numbers, so traced graphs hold them as constants
        self._threshold_map: tuple[int, float, float, bool, float] | None = None
        # optional convolutions at the dense layer's coarse resolution, before the upsampling (9x cheaper per
        # layer than at the upsampled size for upsample 3); an empty Sequential holds no weights
        coarse: list[nn.Module] = []
        previous = channels
        for out in config.coarse_channels:
            coarse += [nn.Conv2d(previous, out, config.kernel_size, padding=config.kernel_size // 2),
                       nn.LeakyReLU(0.2)]
            previous = out
        self.coarse = nn.Sequential(*coarse)
        layers: list[nn.Module] = []
        for out in config.generator_channels[:-1]:
            layers += [nn.Conv2d(previous, out, config.kernel_size, padding=config.kernel_size // 2),
                       nn.LeakyReLU(0.2)]
            previous = out
        # the last convolution is "valid": its kernel maps the upsampled size exactly onto the image size
        kernel = (height * self.upsample - config.image_shape[0] + 1, width * self.upsample - config.image_shape[1] + 1)
        layers.append(nn.Conv2d(previous, 1, kernel))
        self.convolutions = nn.Sequential(*layers)
        # the first convolution after a nearest upsampling, run on the coarse map (upsample_fold); a constant,
        # not saved: the weights stay those of self.convolutions[0]
        self.fold_first = self.upsample > 1 and len(config.generator_channels) > 1
        if self.fold_first:
            self.register_buffer("upsample_fold", upsample_fold(self.upsample, int(config.kernel_size)),
                                 persistent=False)
        # and the last (valid) one too when it follows the first directly: it then reads the coarse map's
        # r^2 x channels (shuffle_fold), so the pixel shuffle moves 1 channel instead of generator_channels[0]
        self.fold_last = self.fold_first and len(config.generator_channels) == 2
        if self.fold_last:
            self.register_buffer("shuffle_fold", shuffle_fold(self.upsample, kernel[0]), persistent=False)
            self.register_buffer("shuffle_fold_x", shuffle_fold(self.upsample, kernel[1]), persistent=False)
        self.image_shape = (int(config.image_shape[0]), int(config.image_shape[1]))
        # model.output_knots: the slopes of phi, exp(KNOT_GAIN * parameter), 1 at the start (phi = identity)
        self.knot_width = float(config.output_knot_range) / max(int(config.output_knots), 1)
        self.knot_slopes: nn.Parameter | None = None
        if config.output_knots:
            self.knot_slopes = nn.Parameter(torch.zeros(int(config.output_knots) + 1))
        # model.total_energy head: the image total from (first energy_noise noise inputs, conditions)
        self.energy_noise = int(config.energy_noise) if config.total_energy == "head" else 0
        self.energy_head: nn.Sequential | None = None
        if self.energy_noise:
            head: list[nn.Module] = []
            previous = self.energy_noise + n_conditions
            for width in config.energy_hidden:
                head += [nn.Linear(previous, width), nn.LeakyReLU(0.2)]
                previous = width
            head.append(nn.Linear(previous, 1))
            self.energy_head = nn.Sequential(*head)
            # total = location + scale * head output: the training totals' mean and standard deviation
            self.register_buffer("energy_location", torch.zeros(1))
            self.register_buffer("energy_scale", torch.ones(1))

    #: phi's slopes are exp(KNOT_GAIN * parameter): Adam moves a parameter by ~lr per step whatever its gradient,
    #: so the gain lets a slope change by a factor e in ~1 / (KNOT_GAIN lr) steps (~170 at lr 6e-4, an epoch) rather
    #: than ~1,700 (a 16-parameter map beside a network of 50k weights)
    KNOT_GAIN = 10.0

    #: Sampling with the energy head rescales E / t directly (:meth:`_rescaled_sample`); False: the training
    #: branch's log-sum-exp form, the same function (kept so that a test can compare them)
    sample_by_scaling = True

    #: Rows per pass in eager mode: the (rows, 16, 12, 12) activations of 256 rows (2.4 MB) stay in cache; on
    #: this CPU 256-row passes ran 2-2.5x faster than 2048-row ones and a 65536-row batch in one pass (600 MB
    #: per activation) several times slower. Rows are independent, so chunking does not change the output.
    chunk_rows = 256

    def bind_threshold(self, preprocessor: Any) -> None:
        """Learn from the preprocessing how ``zero_suppression`` (physical units) maps into model units.

        ``normalise: none``: t = zero_suppression / scale for every row; ``normalise: condition``: t =
        zero_suppression / (scale * c) with c the raw condition, decoded from the encoded conditions.
        """
        if len(preprocessor.target_specs) != 1 or preprocessor.target_specs[0]["kind"] != "image":
            raise ConfigError("model.output threshold needs exactly one image target")
        spec = preprocessor.target_specs[0]
        if spec["transform"] != "none":
            raise ConfigError(f"model.output threshold needs data.image.transform none, got {spec['transform']!r}")
        if spec["normalise"] == "none":
            self._threshold_map = (-1, 0.0, 1.0, False, float(spec["scale"]))
            return
        if spec["normalise"] != "condition":
            raise ConfigError(f"model.output threshold needs data.image.normalise none or condition, got "
                              f"{spec['normalise']!r}")
        (condition,) = [c for c in preprocessor.condition_specs if c["column"] == spec["condition"]]
        if condition["kind"] == "onehot":
            raise ConfigError(f"image normalised by the label column {spec['condition']!r}")
        (position,) = condition_positions(preprocessor, [spec["condition"]])
        self._threshold_map = (position, float(condition["shift"]), float(condition["scale"]),
                               condition["kind"] == "log", float(spec["scale"]))

    def threshold(self, conditions: Tensor) -> Tensor:
        """The zero-suppression threshold per row in model units, (N, 1), from the encoded conditions."""
        if self._threshold_map is None:
            raise RuntimeError("ShowerGenerator.bind_threshold(preprocessor) was not called (output threshold)")
        position, shift, scale, is_log, image_scale = self._threshold_map
        if position < 0:
            return conditions.new_full((conditions.shape[0], 1), self.zero_suppression / image_scale)
        raw = conditions[:, position : position + 1] * scale + shift
        if is_log:
            raw = torch.exp(raw)
        return self.zero_suppression / (image_scale * raw)

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        n = noise.shape[0]
        if n > self.chunk_rows and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            return torch.cat([self._images(noise[i : i + self.chunk_rows], conditions[i : i + self.chunk_rows])
                              for i in range(0, n, self.chunk_rows)])
        return self._images(noise, conditions)

    def total(self, noise: Tensor, conditions: Tensor) -> Tensor:
        """The energy head's image total (N, 1) in model units (``total_energy: head``)."""
        assert self.energy_head is not None
        out = self.energy_head(torch.cat([noise[:, : self.energy_noise], conditions], dim=1))
        return torch.clamp(self.energy_location + self.energy_scale * out, min=1e-6)

    def _images(self, noise: Tensor, conditions: Tensor) -> Tensor:
        noise, readout = noise[:, : self.latent_dim], noise[:, self.latent_dim :]
        h = nn.functional.leaky_relu(self.dense(torch.cat([noise, conditions], dim=1)), 0.2)
        h = self.coarse(h.view(-1, *self.dense_shape))
        if self.fold_first:  # the same function as below, faster (docs/emc_gan.md, "Sampling speed")
            h = self._folded_convolutions(h)
        else:
            h = nn.functional.interpolate(h, scale_factor=float(self.upsample), mode="nearest")
            h = self.convolutions(h)
        if self.output == "threshold":
            u, threshold = self.output_map(self.log_gain * h.flatten(1)), self.threshold(conditions)
            if self.energy_head is not None and not self.training and self.sample_by_scaling:
                return self._rescaled_sample(u, threshold, self.total(noise, conditions), readout)
            if self.energy_head is not None:
                # rescale the map to the head's total: E -> c E is u -> u + ln c; twice, since the cut moves
                # crystals near it in or out (the head learns from the data's totals only: detached here)
                wanted = self.total(noise, conditions)
                if self.training:
                    wanted = wanted.detach()
                for _ in range(2):
                    u = u + (torch.log(wanted / threshold) - self._log_sum_exp_kept(u))
            energy = self._zero_suppressed(u, threshold)
            if self.readout_ratio > 0:  # noise hits: empty crystals (below the cut) whose noise passes it
                level = self.readout_ratio * readout  # the noise in units of the cut t
                hits = ((u < 0) & (level >= 1.0)).to(energy.dtype)
                energy = energy + threshold * level * hits
            return energy
        if self.training and self.output_leak > 0:
            # forward: ReLU; backward: slope output_leak below zero (a straight-through leaky ReLU)
            leaky = nn.functional.leaky_relu(h, self.output_leak)
            return (torch.relu(h).detach() + leaky - leaky.detach()).flatten(1)
        return torch.relu(h).flatten(1)

    def _folded_convolutions(self, h: Tensor) -> Tensor:
        """upsampling + ``convolutions`` on the coarse map ``h``: the first convolution as r^2 x its channels on
        the coarse grid (:func:`upsample_fold`), a pixel shuffle; with :attr:`fold_last` the valid one before the
        shuffle too (:func:`shuffle_fold`). The weights are folded on the fly (a constant in the exported graph)."""
        r, folded = self.upsample, self.upsample_fold
        first, activation = cast(nn.Conv2d, self.convolutions[0]), self.convolutions[1]
        weight = torch.einsum("apy,bqx,ocyx->oabcpq", folded, folded, first.weight)
        reach = int(folded.shape[1])
        weight = weight.reshape(-1, first.in_channels, reach, reach)
        h = activation(nn.functional.conv2d(h, weight, cast(Tensor, first.bias).repeat_interleave(r * r),
                                            padding=reach // 2))
        if not self.fold_last:
            return self.convolutions[2:](nn.functional.pixel_shuffle(h, r))
        last, rows, cols = cast(nn.Conv2d, self.convolutions[2]), self.shuffle_fold, self.shuffle_fold_x
        weight = torch.einsum("aspy,btqx,ocyx->oabcstpq", rows, cols, last.weight)
        top, left = int(rows.shape[2]) - 1, int(cols.shape[2]) - 1
        weight = weight.reshape(r * r, -1, top + 1, left + 1)
        # zero padding on both sides (a Pad node costs more than the convolution in onnxruntime): the output
        # rows before reach - 1 read only padding and are cropped with the rows past the image
        h = nn.functional.conv2d(h, weight, cast(Tensor, last.bias).repeat(r * r), padding=(top, left))
        h = nn.functional.pixel_shuffle(h, r)
        return h[:, :, r * top : r * top + self.image_shape[0], r * left : r * left + self.image_shape[1]]

    def _rescaled_sample(self, u: Tensor, threshold: Tensor, wanted: Tensor, readout: Tensor) -> Tensor:
        """Sampling (eval mode) with the energy head: what the training branch of :meth:`_images` computes, with
        fewer passes over the pixels. u's overall level is free (the rescale removes it; trained maps reach
        u > 100 before it), so the first rescale works on exp(u - max u) <= 1 and scales each row to
        x = E / t = exp(u + ln(T / t) - ln sum_kept exp(u)); the second multiplies x (u + ln c is c x, and
        x >= 1 is u >= 0), so one exp and three row reductions replace two log-sum-exps."""
        top = torch.amax(u, dim=1, keepdim=True)
        y = torch.exp(u - top)
        kept = torch.sum(torch.where(u >= 0, y, torch.zeros_like(y)), dim=1, keepdim=True)
        log_kept = torch.clamp(torch.log(kept) + top, min=-30.0)  # as _log_sum_exp_kept (log 0 = -inf: none kept)
        x = y * torch.exp(top + torch.log(wanted / threshold) - log_kept)
        kept = torch.sum(torch.where(x >= 1.0, x, torch.zeros_like(x)), dim=1, keepdim=True)
        x = x * (wanted / threshold / torch.clamp(kept, min=math.exp(-30.0)))
        energy = torch.where(x >= 1.0, x, torch.zeros_like(x))
        if self.readout_ratio > 0:  # noise hits: empty crystals whose readout noise passes the cut
            level = self.readout_ratio * readout
            energy = torch.where((x < 1.0) & (level >= 1.0), level, energy)
        return threshold * energy

    def output_map(self, u: Tensor) -> Tensor:
        """phi(u) of ``model.output_knots``: monotone, piecewise linear, phi(0) = 0; the identity when off."""
        if self.knot_slopes is None:
            return u
        slopes = torch.exp(self.KNOT_GAIN * self.knot_slopes)
        n, width = slopes.shape[0] - 1, self.knot_width
        # phi at each segment's start, then one lookup per pixel (a gather: cheaper than a pixels x segments
        # expansion, by ~1.5x in onnxruntime); below 0 the first segment's slope, beyond the range the last one
        starts = torch.cat([slopes.new_zeros(1), torch.cumsum(slopes[: n - 1] * width, 0)])
        segment = torch.clamp(torch.floor(u / width), min=0.0, max=float(n - 1)).long()
        inside = torch.clamp(u, max=n * width) - segment.to(u.dtype) * width
        return starts[segment] + slopes[segment] * inside + slopes[n] * torch.relu(u - n * width)

    def _log_sum_exp_kept(self, u: Tensor) -> Tensor:
        """ln sum exp(u) over the crystals :meth:`_zero_suppressed` keeps (with the smooth gate's weights in
        training), so that image total = t exp(this); computed stably (no overflow of exp(u)), >= -30."""
        if self.training and self.gate_temperature > 0:
            logs = u + nn.functional.logsigmoid(u / self.gate_temperature)
        else:
            logs = torch.where(u >= 0, u, torch.full_like(u, -1e4))
        return torch.clamp(torch.logsumexp(logs, dim=1, keepdim=True), min=-30.0)

    def _zero_suppressed(self, u: Tensor, threshold: Tensor) -> Tensor:
        """E = t exp(u) where u >= 0 (so every kept pixel is >= t), exactly 0 below; see GANConfig.output."""
        energy = threshold * torch.exp(u)
        if self.training and self.gate_temperature > 0:
            return energy * torch.sigmoid(u / self.gate_temperature)
        kept = energy * (u >= 0).to(energy.dtype)
        if self.training:  # straight-through: forward the cut, backward d(t exp(u))/du also below it
            return kept.detach() + energy - energy.detach()
        return kept


class MinibatchDiscrimination(nn.Module):
    """Per row b = 1..kernels: the mean over the other rows j of exp(-|M_i,b - M_j,b|_1) (Salimans et al. 2016).

    The mean (rather than the paper's sum) keeps the feature's scale independent of the batch size.
    """

    def __init__(self, in_features: int, kernels: int, kernel_dim: int):
        super().__init__()
        self.kernels, self.kernel_dim = kernels, kernel_dim
        self.projection = nn.Linear(in_features, kernels * kernel_dim, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        m = self.projection(features).view(-1, self.kernels, self.kernel_dim)
        distance = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(-1)  # (N, N, kernels)
        similarity = torch.exp(-distance).sum(1) - 1.0  # without the row itself
        return similarity / max(features.shape[0] - 1, 1)


class ShowerCritic(nn.Module):
    """(flattened image in model space, encoded conditions) -> Wasserstein critic score (N,)."""

    def __init__(self, *, n_conditions: int, config: Any):
        super().__init__()
        self.image_shape = tuple(config.image_shape)
        self.log_epsilon = float(config.log_epsilon)
        self.sparsity_scale = float(config.sparsity_scale)
        layers: list[nn.Module] = []
        n_channels = previous = 2 if self.log_epsilon > 0 else 1
        for i, out in enumerate(config.critic_channels):
            layers += [nn.Conv2d(previous, out, 3, stride=1 if i == 0 else 2, padding=1), nn.LeakyReLU(0.2)]
            previous = out
        self.convolutions = nn.Sequential(*layers)
        with torch.no_grad():
            n_flat = self.convolutions(torch.zeros(1, n_channels, *self.image_shape)).numel()
        self.features = nn.Sequential(nn.Linear(n_flat, config.critic_features), nn.LeakyReLU(0.2))
        self.minibatch = MinibatchDiscrimination(config.critic_features, config.minibatch_kernels,
                                                 config.minibatch_kernel_dim)
        # hit-spectrum feature (critic input ln(1 + E / t)): the levels ln(1 + m) of E / t = m; plain numbers
        self.hit_levels = [math.log1p(float(m)) for m in config.critic_hit_levels]
        self.hit_softness = float(config.critic_hit_softness)
        n_head = config.critic_features + config.minibatch_kernels + n_conditions + 2 + len(self.hit_levels)
        self.head = nn.Sequential(nn.Linear(n_head, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))

    #: (critic input, conditions) -> the pixels in model units, for the total-energy feature; None: the input
    #: itself. A plain attribute (not a module): it holds no weights.
    total_of: Any = None

    def forward(self, images: Tensor, conditions: Tensor) -> Tensor:
        x = images.view(-1, 1, *self.image_shape)
        if self.log_epsilon > 0:
            x = torch.cat([x, torch.log(torch.clamp(x, min=0.0) + self.log_epsilon)], dim=1)
        f = self.features(self.convolutions(x).flatten(1))
        # the energy sum in model units (with a log critic input, decoded from ln(1 + x / t); set by the GAN)
        total = (images.sum(1, keepdim=True) if self.total_of is None
                 else self.total_of(images, conditions).sum(1, keepdim=True))
        sparsity = (1.0 - torch.exp(-torch.clamp(images, min=0.0) / self.sparsity_scale)).mean(1, keepdim=True)
        parts = [f, self.minibatch(f), conditions, total, sparsity]
        if self.hit_levels:
            parts.append(self.hit_spectrum(images))
        return self.head(torch.cat(parts, dim=1)).squeeze(1)

    def hit_spectrum(self, images: Tensor) -> Tensor:
        """(N, levels): the fraction of crystals whose input ln(1 + E / t) is above each level, as soft steps
        (a sigmoid of width ``hit_softness``, so the feature is Lipschitz for the gradient penalty)."""
        levels = images.new_tensor(self.hit_levels)
        return torch.sigmoid((images.unsqueeze(2) - levels) / self.hit_softness).mean(1)


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, conditions: Tensor, *,
                     alpha: Tensor | None = None) -> Tensor:
    """E[(|grad_x D(x_hat, c)|_2 - 1)^2] at x_hat = alpha real + (1 - alpha) fake, alpha ~ U(0, 1) per row."""
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(mixed, conditions).sum(), mixed, create_graph=True)
    return ((gradient.norm(2, dim=1) - 1.0) ** 2).mean()


class RegressorNet(nn.Module):
    """Image (flattened, model space) -> predicted encoded conditions: Conv2D channels -> Dense hidden -> outputs."""

    def __init__(self, *, image_shape: list[int], n_outputs: int, config: Any):
        super().__init__()
        self.image_shape = tuple(image_shape)
        layers: list[nn.Module] = []
        previous = 1
        for i, out in enumerate(config.conv_channels):
            layers += [nn.Conv2d(previous, out, 3, stride=1 if i == 0 else 2, padding=0 if i else 1),
                       nn.LeakyReLU(0.2)]
            previous = out
        self.convolutions = nn.Sequential(*layers)
        with torch.no_grad():
            n_flat = self.convolutions(torch.zeros(1, 1, *self.image_shape)).numel()
        dense: list[nn.Module] = []
        previous = n_flat
        for width in config.hidden:
            dense += [nn.Linear(previous, width), nn.LeakyReLU(0.2)]
            previous = width
        dense.append(nn.Linear(previous, n_outputs))
        self.dense = nn.Sequential(*dense)

    def forward(self, images: Tensor) -> Tensor:
        return self.dense(self.convolutions(images.view(-1, 1, *self.image_shape)).flatten(1))


class _NoSamples(nn.Module):
    """The 'generator' of a regressor run: a regressor draws no images, so its samples are NaN."""

    def __init__(self, n_targets: int):
        super().__init__()
        self.n_targets = n_targets

    def forward(self, noise: Tensor, conditions: Tensor) -> Tensor:
        return torch.full((noise.shape[0], self.n_targets), float("nan"), dtype=noise.dtype, device=noise.device)


# ------------------------------------------------------------------------------------------ families
class ImageRegressor(ModelFamily):
    """Reads conditions (``model.predict``, encoded units) back from an image; trained alone, then frozen in a GAN.

    Example:
        >>> from detgen.config import RegressorConfig
        >>> regressor = ImageRegressor(n_targets=121, n_conditions=6, config=RegressorConfig())
        >>> regressor.net(torch.zeros(4, 121)).shape
        torch.Size([4, 3])
    """

    generates = False

    def __init__(self, *, n_targets: int, n_conditions: int, config: Any):
        super().__init__()
        _check_pixels(n_targets, config.image_shape, "regressor")
        self.config = config
        self.n_targets = n_targets
        self.net = RegressorNet(image_shape=config.image_shape, n_outputs=len(config.predict), config=config)
        # positions of the predicted columns in the encoded conditions (set from the preprocessing)
        self.predict_index: list[int] = list(range(len(config.predict)))

    def bind_preprocessor(self, preprocessor: Any) -> None:
        self.predict_index = condition_positions(preprocessor, list(self.config.predict))

    def residuals(self, targets: Tensor, conditions: Tensor) -> Tensor:
        """Prediction minus truth, (N, len(predict)), encoded (standardised) units."""
        return self.net(targets) - conditions[:, self.predict_index]

    def loss(self, targets: Tensor, conditions: Tensor) -> Tensor:
        r = self.residuals(targets, conditions)
        per_row = r.abs().sum(1) if self.config.loss == "l1" else (r**2).sum(1)
        return per_row.mean()

    def make_optimizers(self, training: Any) -> dict[str, torch.optim.Optimizer]:
        if training.best_metric != "val_loss":
            raise ConfigError("model.family regressor draws no samples: set training.best_metric: val_loss")
        return super().make_optimizers(training)

    def generator(self) -> nn.Module:
        return _NoSamples(self.n_targets)


class ConditionalGAN(ModelFamily):
    """Conditional WGAN-GP with minibatch discrimination and an optional frozen regressor (see module doc).

    Example:
        >>> from detgen.config import GANConfig
        >>> gan = ConditionalGAN(n_targets=121, n_conditions=6, config=GANConfig())
        >>> gan.generator()(torch.randn(2, gan.noise_dim), torch.zeros(2, 6)).shape
        torch.Size([2, 121])
    """

    def __init__(self, *, n_targets: int, n_conditions: int, config: Any):
        super().__init__()
        _check_pixels(n_targets, config.image_shape, "gan")
        self.config = config
        self.n_targets = n_targets
        self.generator_net = ShowerGenerator(noise_dim=int(config.noise_dim), n_conditions=n_conditions, config=config)
        # the sampler's noise: the generator's latent, then (readout_noise) one readout normal per pixel
        self.noise_dim = int(config.noise_dim) + (n_targets if config.readout_noise > 0 else 0)
        self.critic = ShowerCritic(n_conditions=n_conditions, config=config)
        if config.critic_input == "log" and config.critic_total == "energy":
            # the critic's total-energy feature from ln(1 + x / t): sum of t (exp(v) - 1), i.e. the linear sum
            self.critic.total_of = lambda view, cond: self.generator_net.threshold(cond) * torch.expm1(view)
        self.critic_rows = 128  # rows per critic step in validation (set from the training batch size)
        self._preprocessor: Any = None
        # the frozen regressor: deliberately not a registered submodule, so it is neither trained nor saved
        self._regressor: list[ImageRegressor] = []
        self._regressor_preprocessor: list[Any] = []

    def bind_preprocessor(self, preprocessor: Any) -> None:
        self._preprocessor = preprocessor
        if self.config.output == "threshold":
            self.generator_net.bind_threshold(preprocessor)

    def generator(self) -> nn.Module:
        return self.generator_net

    # ---- the frozen regressor
    def prepare_training(self, preprocessor: Any, train_set: tuple[Tensor, ...], val_set: tuple[Tensor, ...],
                         log: Any) -> dict[str, Any]:
        """Load the regressor run (``model.regressor_run``), check its columns, freeze it.

        The regressor may have its own preprocessing (e.g. the map in GeV rather than as a fraction of the
        momentum): generated images and conditions pass through physical units into the regressor's space.
        """
        self._check_negative_pixels(preprocessor, *train_set)
        info: dict[str, Any] = {}
        net = self.generator_net
        if net.energy_head is not None:
            totals = train_set[0].double().sum(1)
            net.energy_location.fill_(float(totals.mean()))
            net.energy_scale.fill_(max(float(totals.std()), 1e-6))
            info["energy_head"] = {"location": float(totals.mean()), "scale": float(totals.std())}
        if self.config.regressor_run is None:
            return info
        from detgen.runs import load_run

        run = load_run(self.config.regressor_run, device=str(train_set[0].device))
        where = f"model.regressor_run {self.config.regressor_run}"
        if run.config.model.family != "regressor":
            raise ConfigError(f"{where}: a {run.config.model.family!r} run, expected family regressor")
        if (run.preprocessor.input_columns, run.preprocessor.target_columns) != (
            preprocessor.input_columns, preprocessor.target_columns
        ):
            raise ConfigError(
                f"{where}: its columns {run.preprocessor.input_columns} -> {run.preprocessor.target_columns} differ "
                f"from this run's {preprocessor.input_columns} -> {preprocessor.target_columns}"
            )
        regressor: ImageRegressor = run.model  # type: ignore[assignment]
        for parameter in regressor.parameters():
            parameter.requires_grad_(False)
        self._preprocessor = preprocessor
        self._regressor = [regressor.eval()]
        self._regressor_preprocessor = [run.preprocessor]
        with torch.no_grad():
            rows = min(len(val_set[0]), 20_000)
            l1 = float(self.regression_l1(val_set[0][:rows], val_set[1][:rows]))
        log(f"regressor {self.config.regressor_run}: L1 {l1:.4f} on {rows} validation images (its encoded units)")
        return info | {"regressor": {"run": str(Path(self.config.regressor_run).resolve()),
                                     "predict": list(regressor.config.predict), "validation_l1": l1}}

    def _check_negative_pixels(self, preprocessor: Any, targets: Tensor, conditions: Tensor) -> None:
        """DataError if a training image has a pixel below ``model.min_pixel`` (physical units)."""
        with torch.no_grad():
            lowest = torch.cat([
                preprocessor.decode_targets(targets[s : s + 8192], decode_conditions(preprocessor, conditions[s : s + 8192]))
                .min(1).values for s in range(0, len(targets), 8192)])
        bad = torch.nonzero(lowest < self.config.min_pixel).squeeze(1)
        if bad.numel():
            raise DataError(
                f"{bad.numel()} training image(s) have a pixel below model.min_pixel = {self.config.min_pixel} "
                f"(first: training row {int(bad[0])}, {float(lowest[bad[0]]):.4g}); the GAN's ReLU output makes no "
                "negative energies: zero-suppress the noise (or lower model.min_pixel knowingly)"
            )

    def regression_l1(self, images: Tensor, conditions: Tensor) -> Tensor:
        """E_rows sum_k |y_k - R(images)_k| in the regressor's encoded units (0 without a regressor).

        ``images`` and ``conditions`` are in this model's space; both go through physical units into the
        regressor's preprocessing, so the gradient reaches the generator through plain tensor ops.
        """
        if not self._regressor:
            return images.new_zeros(())
        regressor, theirs = self._regressor[0], self._regressor_preprocessor[0]
        raw = decode_conditions(self._preprocessor, conditions)
        physical = self._preprocessor.decode_targets(images, raw)
        predicted = regressor.net(theirs.encode_targets(physical, raw))
        truth = theirs.encode_conditions(raw)[:, regressor.predict_index]
        return (predicted - truth).abs().sum(1).mean()

    # ---- training
    def make_optimizers(self, training: Any) -> dict[str, torch.optim.Optimizer]:
        betas = (float(self.config.betas[0]), float(self.config.betas[1]))
        self.critic_rows = max(training.batch_size // self.config.n_critic, 2)
        return {
            "generator": torch.optim.Adam(self.generator_net.parameters(), lr=training.lr, betas=betas),
            "critic": torch.optim.Adam(
                [{"params": list(self.critic.parameters()), "lr_scale": self.config.critic_lr_scale}],
                lr=training.lr * self.config.critic_lr_scale, betas=betas,
            ),
        }

    def critic_view(self, images: Tensor, conditions: Tensor) -> Tensor:
        """The images as the critic sees them (and where the gradient penalty is taken).

        ``critic_input: linear``: unchanged (model units). ``log``: ln(1 + x / t), t the per-row zero-suppression
        threshold in model units: empty crystals 0, a crystal at the cut ln 2, a core ~8. In linear model units a
        critic feature that sees 1e-4-scale tail crystals has input gradients ~1e4, which the gradient penalty
        (|grad| ~ 1) forbids, so a Lipschitz critic is nearly blind to the crystal count; in ln(1 + x / t) tail
        and core have comparable scales.
        """
        if self.config.critic_input == "linear":
            return images
        return torch.log1p(torch.clamp(images, min=0.0) / self.generator_net.threshold(conditions))

    def train_step(self, targets: Tensor, conditions: Tensor, optimizers: dict[str, torch.optim.Optimizer],
                   training: Any) -> dict[str, float]:
        """n_critic critic updates on slices of the batch, then one generator update on the whole batch."""
        critic_opt, generator_opt = optimizers["critic"], optimizers["generator"]
        self.generator_net.requires_grad_(False)
        wasserstein, penalties, n_slices = 0.0, 0.0, 0
        for real, cond in zip(targets.chunk(self.config.n_critic), conditions.chunk(self.config.n_critic)):
            with torch.no_grad():
                fake = self.generator_net(torch.randn(real.shape[0], self.noise_dim, device=real.device), cond)
            real_view, fake_view = self.critic_view(real, cond), self.critic_view(fake, cond)
            distance = self.critic(real_view, cond).mean() - self.critic(fake_view, cond).mean()
            penalty = gradient_penalty(self.critic, real_view, fake_view, cond)
            critic_loss = -distance + self.config.gp_weight * penalty
            optimizer_step(critic_loss, critic_opt, self.critic.parameters(), training.grad_clip, "critic loss")
            wasserstein, penalties, n_slices = wasserstein + distance.item(), penalties + penalty.item(), n_slices + 1
        self.generator_net.requires_grad_(True)
        self.critic.requires_grad_(False)
        fake = self.generator_net(torch.randn(targets.shape[0], self.noise_dim, device=targets.device), conditions)
        adversarial = -self.critic(self.critic_view(fake, conditions), conditions).mean()
        regression = self.regression_l1(fake, conditions)
        generator_loss = adversarial + self.config.regressor_weight * regression
        scores = {}
        if self.generator_net.energy_head is not None:
            score = self.energy_score(targets, conditions)
            generator_loss = generator_loss + self.config.energy_weight * score
            scores["energy_score"] = score.item()
        optimizer_step(generator_loss, generator_opt, self.generator_net.parameters(), training.grad_clip,
                       "generator loss")
        self.critic.requires_grad_(True)
        return {"loss": wasserstein / n_slices, "gradient_penalty": penalties / n_slices,
                "generator": adversarial.item(), "regression_l1": regression.item(), **scores}

    def energy_score(self, targets: Tensor, conditions: Tensor) -> Tensor:
        """The energy head's CRPS against the real image totals, in units of their spread (two draws per row).

        E|X - y| - E|X - X'| / 2 is a strictly proper score for the conditional law of the total: its minimum
        over the head is the law of the data (one real total per condition suffices)."""
        net = self.generator_net
        n = targets.shape[0]
        real = targets.sum(1, keepdim=True)
        first = net.total(torch.randn(n, self.noise_dim, device=targets.device), conditions)
        second = net.total(torch.randn(n, self.noise_dim, device=targets.device), conditions)
        crps = 0.5 * ((first - real).abs() + (second - real).abs()) - 0.5 * (first - second).abs()
        return crps.mean() / net.energy_scale.squeeze()

    def validation_loss(self, targets: Tensor, conditions: Tensor) -> Tensor:
        """``val_loss``: the critic's Wasserstein estimate (``model.validation: critic``) or the mean image-level
        separation power (``showers``, :meth:`shower_separation`)."""
        if self.config.validation == "showers":
            return targets.new_tensor(self.shower_separation(targets, conditions)["mean"])
        return self.loss(targets, conditions)

    @torch.no_grad()
    def shower_separation(self, targets: Tensor, conditions: Tensor) -> dict[str, float]:
        """Separation powers of generated vs given images (fixed noise) in physical units, and their mean.

        Observables per image, pixels below ``zero_suppression`` (physical units) counting as empty: the number
        of hit pixels, ln of the total, the brightest pixel's fraction of the total, the energy-weighted RMS
        radius (pixels) about the centroid; and the spectrum of ln(hit energy), all hits pooled. Histograms: 30
        bins over the given images' 0.1-99.9% range (one bin per integer for the hit count), outliers in the
        outer bins. These are the shower-shape features the per-pixel W1 is blind to (hit count, tails).
        """
        if self._preprocessor is None:
            raise RuntimeError("ConditionalGAN.bind_preprocessor was not called")
        noise = torch.randn(targets.shape[0], self.noise_dim, generator=torch.Generator().manual_seed(0))
        fake = self.generator_net(noise.to(targets.device), conditions)
        raw = decode_conditions(self._preprocessor, conditions)
        threshold = self.config.zero_suppression
        samples = {}
        for name, images in (("truth", targets), ("generated", fake)):
            physical = self._preprocessor.decode_targets(images, raw).double().cpu().numpy()
            samples[name] = _image_observables(physical.reshape(-1, *self.config.image_shape), threshold)
        result = {}
        for key in samples["truth"]:
            result[key] = separation_in_truth_range(samples["truth"][key], samples["generated"][key],
                                                    discrete=key == "n_hits")
        result["mean"] = float(np.mean(list(result.values())))
        return result

    def loss(self, targets: Tensor, conditions: Tensor) -> Tensor:
        """The critic's Wasserstein estimate E[D(real)] - E[D(fake)] (fixed noise; rows in critic-sized slices)."""
        noise = torch.randn(targets.shape[0], self.noise_dim, generator=torch.Generator().manual_seed(0))
        noise = noise.to(targets.device)
        total = targets.new_zeros(())
        for start in range(0, targets.shape[0], self.critic_rows):
            real, cond = targets[start : start + self.critic_rows], conditions[start : start + self.critic_rows]
            fake = self.generator_net(noise[start : start + self.critic_rows], cond)
            total = total + (self.critic(self.critic_view(real, cond), cond).sum()
                             - self.critic(self.critic_view(fake, cond), cond).sum())
        return total / targets.shape[0]


def _image_observables(images: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Image-level observables of (N, H, W) images in physical units (see ConditionalGAN.shower_separation)."""
    hits = np.where(images >= threshold, images, 0.0) if threshold > 0 else np.clip(images, 0.0, None)
    n = hits.shape[0]
    flat = hits.reshape(n, -1)
    total = flat.sum(1)
    safe = np.where(total > 0, total, 1.0)
    rows, cols = np.indices(hits.shape[1:], dtype=np.float64)
    centre_r = (hits * rows).sum((1, 2)) / safe
    centre_c = (hits * cols).sum((1, 2)) / safe
    r2 = (rows[None] - centre_r[:, None, None]) ** 2 + (cols[None] - centre_c[:, None, None]) ** 2
    return {
        "n_hits": (flat > 0).sum(1).astype(np.float64),
        "log_total": np.log(np.where(total > 0, total, 1e-30)),
        "brightest_fraction": flat.max(1) / safe,
        "radius": np.sqrt((hits * r2).sum((1, 2)) / safe),
        "log_hit_energy": np.log(flat[flat > 0]) if (flat > 0).any() else np.zeros(1),
    }





def decode_conditions(preprocessor: Any, encoded: Tensor) -> Tensor:
    """Encoded conditions (no group code) -> the raw sampler condition input (physical units, label codes)."""
    numeric_positions, parts, offset = [], [], 0
    for spec in preprocessor.condition_specs:
        width = len(spec["categories"]) if spec["kind"] == "onehot" else 1
        if spec["kind"] != "onehot":
            numeric_positions.append(offset)
        offset += width
    numeric = (preprocessor.numeric_conditions.inverse(encoded[:, numeric_positions])
               if numeric_positions else None)
    offset, j = 0, 0
    for spec in preprocessor.condition_specs:
        if spec["kind"] == "onehot":
            width = len(spec["categories"])
            parts.append(encoded[:, offset : offset + width].argmax(1, keepdim=True).to(encoded.dtype))
        else:
            width = 1
            assert numeric is not None
            parts.append(numeric[:, j : j + 1])
            j += 1
        offset += width
    return torch.cat(parts, dim=1)
