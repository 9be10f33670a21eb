"""The lean sampler with its per-plan constants folded into the weights: the network the
exported artefact runs (:mod:`mode_policy.serving.export`).

:class:`~mode_policy.model.lean_sampler.LeanSampler` keeps the module path's operations, so its
actions are bitwise those of the module path. A graph runtime (ONNX Runtime) gains from
fewer operations with constant, two-dimensional weights (it pre-packs those once), so here,
once per plan:

* each RMSNorm's scale is folded into the weight that follows it (attention input into
  ``qkv``, MLP input into the experts' first layer, output norm into ``action_out``);
* the noise-conditioned attention's ``phi_j`` becomes a per-step bias ``qkv @ phi_j``;
* the k experts a layer uses at a step are concatenated into one SwiGLU of hidden k*h
  (one pair of weights per distinct expert combination, shared by the steps that use it),
  and the step's mixing weights scale that hidden layer (a (k*h,) vector per step);
* weights are stored transposed, ``(in, out)``, so every projection is ``x @ W``.

The result is the same function up to float rounding (reassociated products); the export
parity check bounds the difference (``tests/test_export.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .diffusion import Sampler
from .lean_sampler import LeanSampler


class FoldedSampler(nn.Module):
    """``(cond (B, n, d), x (B, H, A) at sigma_max) -> normalised actions (B, H, A)``, built
    from a :class:`LeanSampler`; every constant is a buffer, so an export holds it once."""

    def __init__(self, lean: LeanSampler) -> None:
        super().__init__()
        d = lean.d
        self.d, self.n_heads, self.causal, self.offset = d, lean.n_heads, lean.causal, lean.offset
        self.register_buffer("pos", lean.pos.clone())  # (1, T, d)
        w, b = lean.action_in
        self.register_buffer("action_in_w", w.t().contiguous())  # (A, d)
        self.register_buffer("action_in_b", b.clone())
        norm_w, self.eps_out = lean.norm_out
        w, b = lean.action_out
        self.register_buffer("action_out_w", (w * norm_w).t().contiguous())  # (d, A)
        self.register_buffer("action_out_b", b.clone())
        self.eps1 = [layer.eps1 for layer in lean.layers]
        self.eps2 = [layer.eps2 for layer in lean.layers]
        self.eps_qk = [layer.eps_qk for layer in lean.layers]
        for i, layer in enumerate(lean.layers):
            self.register_buffer(f"qkv_{i}", (layer.qkv * layer.norm1).t().contiguous())  # (d, 3d)
            self.register_buffer(f"q_norm_{i}", layer.q_norm.clone())
            self.register_buffer(f"k_norm_{i}", layer.k_norm.clone())
            self.register_buffer(f"proj_{i}", layer.proj.t().contiguous())  # (d, d)
        self.c = [(s.c_in, s.c_skip, s.c_out) for s in lean.steps]
        self.has_noise_token = lean.steps[0].noise_token is not None
        self.conditioned = lean.steps[0].phi is not None
        # MLPs: name of the (w_in, w_out) pair and of the mixing vector, per step and layer
        self.mlp: list[list[tuple[str, str | None]]] = []
        pairs: dict[tuple, str] = {}
        for j, step in enumerate(lean.steps):
            if step.noise_token is not None:
                self.register_buffer(f"noise_token_{j}", step.noise_token.clone())  # (1, 1, d)
            row = []
            for i, (layer, fused) in enumerate(zip(lean.layers, step.experts)):
                if step.phi is not None:
                    self.register_buffer(f"qkv_bias_{j}_{i}", F.linear(step.phi, layer.qkv))  # (1, 1, 3d)
                key = (
                    (i, "dense")
                    if fused is None
                    else (i, fused.w13.data_ptr(), fused.w13.stride(0), fused.w13.shape[0])
                )
                if key not in pairs:
                    pairs[key] = f"mlp_{len(pairs)}"
                    w_in, w_out = _concatenated(*(layer.dense if fused is None else (fused.w13, fused.w2)))
                    self.register_buffer(f"{pairs[key]}_in", (w_in * layer.norm2[:, None]).contiguous())
                    self.register_buffer(f"{pairs[key]}_out", w_out)
                mix = None
                if fused is not None:
                    mix = f"mix_{j}_{i}"
                    hidden = fused.w2.shape[1]
                    self.register_buffer(mix, fused.mix.reshape(-1).repeat_interleave(hidden).clone())  # (k h,)
                row.append((pairs[key], mix))
            self.mlp.append(row)

    def forward(self, cond: Tensor, x: Tensor, sampler: Sampler, sigmas) -> Tensor:
        n_cond, horizon = cond.shape[1], x.shape[1]
        start = self.offset + n_cond
        prefix = cond + self.pos[:, self.offset : start]  # (B, n, d)
        action_pos = self.pos[:, start : start + horizon]  # (1, H, d)
        return sampler.run(lambda x, j: self.denoise(x, j, prefix, action_pos), x, sigmas)

    def denoise(self, x: Tensor, j: int, prefix: Tensor, action_pos: Tensor) -> Tensor:
        """D(x, sigma_j) (B, H, A) at evaluation ``j``."""
        c_in, c_skip, c_out = self.c[j]
        b, horizon, _ = x.shape
        d, heads = self.d, self.n_heads
        rows = [prefix, (x * c_in) @ self.action_in_w + self.action_in_b + action_pos]
        if self.has_noise_token:
            rows.insert(0, getattr(self, f"noise_token_{j}").expand(b, 1, d))
        h = torch.cat(rows, dim=1)  # (B, T, d)
        t = h.shape[1]
        for i, (pair, mix) in enumerate(self.mlp[j]):
            a = F.rms_norm(h, (d,), None, self.eps1[i]) @ getattr(self, f"qkv_{i}")  # (B, T, 3d)
            if self.conditioned:
                a = a + getattr(self, f"qkv_bias_{j}_{i}")
            # slices, not split/unbind: those export as ONNX sequence operators, slower per call
            q, k, v = (
                a[..., i * d : (i + 1) * d].reshape(b, t, heads, d // heads) for i in range(3)
            )  # (B, T, heads, hd)
            q = F.rms_norm(q, (d // heads,), getattr(self, f"q_norm_{i}"), self.eps_qk[i][0]).transpose(1, 2)
            k = F.rms_norm(k, (d // heads,), getattr(self, f"k_norm_{i}"), self.eps_qk[i][1]).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=self.causal)  # (B, heads, T, hd)
            h = h + y.transpose(1, 2).reshape(b, t, d) @ getattr(self, f"proj_{i}")
            g = F.rms_norm(h, (d,), None, self.eps2[i]) @ getattr(self, f"{pair}_in")  # (B, T, 2 k h): [gates | ups]
            half = g.shape[-1] // 2
            act = F.silu(g[..., :half]) * g[..., half:]  # (B, T, k h)
            if mix is not None:
                act = act * getattr(self, mix)
            h = h + act @ getattr(self, f"{pair}_out")
        out = F.rms_norm(h[:, t - horizon :], (d,), None, self.eps_out) @ self.action_out_w + self.action_out_b
        return x * c_skip + out * c_out


def _concatenated(w13: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
    """One SwiGLU from k: ``w13`` (k, d, 2h) or (d, 2h) = [gate | up], ``w2`` (k, h, d) or (h, d)
    -> ``w_in`` (d, 2kh) = [gates | ups], ``w_out`` (kh, d), experts in the same order in both."""
    if w13.dim() == 2:
        return w13.clone(), w2.clone()
    gates, ups = w13.chunk(2, dim=-1)  # (k, d, h) each
    w_in = torch.cat([*gates.unbind(0), *ups.unbind(0)], dim=-1)  # (d, 2kh)
    return w_in, w2.reshape(-1, w2.shape[-1]).clone()  # (kh, d)
