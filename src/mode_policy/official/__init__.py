"""The official MoDE network as an option (``MoDEConfig.architecture="official"``), and the
converter of the released checkpoints into this library's model folders.

``architecture="official"`` builds the network function of the authors' code
(``intuitive-robots/MoDE_Diffusion_Policy``: ``MoDeDiT`` inside ``GCDenoiser``, with the
FiLM-ResNet cameras of ``MoDEAgent``) with this library's names, so that a converted
checkpoint computes the same outputs. What it changes against the default network
(``architecture="mode"``), switch by switch:

==========================  =================================================  ==============================
part                        official (this package)                            default network
==========================  =================================================  ==============================
residual stream             re-normalised after attention: ``x = RMSNorm(x)``,  pre-norm, un-normalised stream
                            then ``x + MoE(x)``
RMSNorm                     ``x / max(|x|/sqrt(d), 1e-6) * g``                 ``x / sqrt(mean(x^2) + 1e-6) * g``
training expert choice      k experts sampled per token (all B*T rows)          per sample
balancing loss              ``E * sum_i mean(top-k weight_i) * share_i``        Switch-style on the softmax
                            (k at balance)                                     (1 at balance)
shared expert               top-(k-1) of E-1 routed + one always-on expert      top-k of E + an extra expert
router                      Linear(d,2d), GELU, Linear(2d,E); clamped softmax   Linear, SiLU, Linear; softmax
goal dropout                Bernoulli zeroing, no rescale, goal token only;     ``F.dropout`` (rescaled), FiLM
                            FiLM sees the clean goal                           sees the dropped goal
noise embedding             Linear(1,d) then Linear(d,d, no bias)               Linear(1,d)
positions                   none for the noise token; goal 0; every camera 1;   one per token
                            actions 1..H
biases                      q/k/v, expert up-projection, router, output head;   none in attention and experts
                            no bias on goal/image/action embeddings
dropout                     attention probabilities; inside each expert          attention probabilities;
                            (``resid_dropout``); none after attention           after attention and MLP
vision                      ResNet (timm names) + FiLM ``(1+g)x+b`` per stage,   FiLM-ResNet per camera with its
                            CLIP pixel statistics, one shared                  own projection, ImageNet pixel
                            Linear(features, d, no bias)                       statistics
initialisation              PyTorch defaults, zero positions, N(0, 0.02)        GPT-2 style, zero output head
                            routers (the official code applies no other)
==========================  =================================================  ==============================

Modules: :mod:`.spec` (the config checks), :mod:`.network` (the transformer),
:mod:`.vision` (the cameras), :mod:`.convert` (official checkpoint -> model folder),
:mod:`.inputs` (the official inputs and the official denoiser call for a converted policy).
"""

from .inputs import OfficialDenoiser, condition_tokens, official_batch

__all__ = ["OfficialDenoiser", "condition_tokens", "official_batch"]
