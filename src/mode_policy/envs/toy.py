"""A toy multimodal imitation task: two goals, two equally valid actions each.

For goal 0 the demonstrated action is +m or -m with m = (0.6, 0.6); for goal 1
it is +m or -m with m = (0.6, -0.6). A policy that regresses to the mean
predicts 0 and lands *between* the modes; a diffusion policy must put its
samples near both modes. A sample is "near" a mode when it is closer to it than
half the distance from the mean (0) to the mode, and "in between" when it is
near neither. Used by the "it learns" test and ``mode-policy toy``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..constants import ACTION_IS_PAD_KEY, ACTION_KEY, GOAL_KEY, STATE_KEY
from ..model.config import get_preset
from ..policy import MoDEPolicy

MODES = torch.tensor([[0.6, 0.6], [0.6, -0.6]])  # (goals, action_dim): +/- each row
NEAR = 0.5 * float(MODES[0].norm())  # half the distance from the mean to a mode


def sample_toy_batch(batch_size: int, horizon: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A batch of toy demonstrations: one-hot goal, noise state, the action repeated over the chunk."""
    goal_idx = torch.randint(0, 2, (batch_size,), generator=generator)
    sign = torch.randint(0, 2, (batch_size,), generator=generator).float() * 2 - 1
    action = (MODES[goal_idx] * sign[:, None]).unsqueeze(1).expand(-1, horizon, -1)  # (B, H, 2)
    return {
        STATE_KEY: torch.randn(batch_size, 2, generator=generator),
        GOAL_KEY: torch.nn.functional.one_hot(goal_idx, 2).float(),
        ACTION_KEY: action.contiguous(),
        ACTION_IS_PAD_KEY: torch.zeros(batch_size, horizon, dtype=torch.bool),
    }


@dataclass
class ToyResult:
    steps: int
    seconds: float
    final_loss: float
    mode_fractions: list[list[float]]  # [goal][mode +, mode -]
    between_fraction: float

    def passed(self) -> bool:
        return self.between_fraction < 0.05 and all(f >= 0.25 for pair in self.mode_fractions for f in pair)


def mode_statistics(samples: Tensor, goal_idx: Tensor) -> tuple[list[list[float]], float]:
    """samples: (N, H, 2) sampled chunks (their mean action is scored). Fractions
    near +m / -m per goal, and the overall fraction in between."""
    mean_action = samples.mean(1)  # (N, 2)
    fractions, between = [], 0
    for g in range(len(MODES)):
        chosen = mean_action[goal_idx == g]
        d_plus = (chosen - MODES[g]).norm(dim=-1)
        d_minus = (chosen + MODES[g]).norm(dim=-1)
        n = max(len(chosen), 1)
        fractions.append([(d_plus < NEAR).sum().item() / n, (d_minus < NEAR).sum().item() / n])
        between += ((d_plus >= NEAR) & (d_minus >= NEAR)).sum().item()
    return fractions, between / max(len(samples), 1)


def train_toy(
    steps: int = 800,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    n_eval: int = 1000,
    progress: bool = False,
) -> ToyResult:
    """Train the ``tiny`` MoDE preset (single-action chunks) on the toy task and
    measure where its samples land."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = get_preset("tiny", state_dim=2, action_dim=2, goal_dim=2, goal_dropout=0.0, horizon=1, n_action_steps=1)
    policy = MoDEPolicy(cfg)
    policy.set_normalization(
        {
            "action": {"min": [-1.0, -1.0], "max": [1.0, 1.0]},
            STATE_KEY: {"mean": [0.0, 0.0], "std": [1.0, 1.0]},
        }
    )
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    start = time.perf_counter()
    iterator = range(steps)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="toy training", unit="step")
    loss = torch.tensor(float("nan"))
    for _ in iterator:
        loss, _ = policy(sample_toy_batch(batch_size, cfg.horizon, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    policy.eval()
    batch = sample_toy_batch(n_eval, cfg.horizon, gen)
    samples = policy.predict_action_chunk(batch)
    fractions, between = mode_statistics(samples, batch[GOAL_KEY].argmax(-1))
    return ToyResult(steps, seconds, float(loss.detach()), fractions, between)
