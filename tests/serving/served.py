"""A tiny policy and a server running it on 127.0.0.1 (an ephemeral port) in a background thread."""

from __future__ import annotations

import asyncio
import threading

import torch

from mode_policy import MoDEPolicy, get_preset
from mode_policy.serving import PolicyServer

TASKS = ["open the drawer", "press the button"]
ACTION_MIN, ACTION_MAX = [-2.0, -1.0, 0.0, 5.0], [2.0, 1.0, 1.0, 6.0]


def make_policy() -> MoDEPolicy:
    torch.manual_seed(0)
    cfg = get_preset(
        "tiny", state_dim=39, action_dim=4, goal_dim=8, goal_encoder={"type": "task", "tasks": TASKS, "dim": 8}
    )
    policy = MoDEPolicy(cfg)
    with torch.no_grad():  # a non-zero output head, so actions depend on the inputs
        torch.nn.init.normal_(policy.denoiser.net.action_out.weight, std=0.5)
    policy.set_normalization(
        {"action": {"min": ACTION_MIN, "max": ACTION_MAX}, "observation.state": {"mean": [0.5] * 39, "std": [2.0] * 39}}
    )
    return policy.eval()


class RunningServer:
    """A PolicyServer serving in a thread; ``stop()`` shuts it down gracefully."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()
        assert self._ready.wait(30), "server did not start"

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        await self.server.serve(self._stop, lambda port: self._ready.set())

    @property
    def port(self) -> int:
        return self.server.port

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        assert not self.thread.is_alive(), "server did not shut down"
