"""Neural-network building blocks: norms, attention, SwiGLU, router, MoE, expert cache."""
