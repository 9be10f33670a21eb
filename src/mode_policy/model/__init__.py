"""The MoDE network: its configuration, the transformer and its mixture-of-experts layers, the EDM
denoiser around it, the diffusion maths and samplers (with their fast twins), the expert cache,
and the normalisation that travels with a checkpoint."""
