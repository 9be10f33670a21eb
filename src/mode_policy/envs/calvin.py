"""CALVIN (Mees et al. 2022): the evaluation chains, initial scenes, task oracle, instructions,
and the simulator's observations and actions, as in the official
``calvin_models/calvin_agent/evaluation/evaluate_policy.py``.

* :func:`get_sequences`: the official 1000 chains of 5 instructions (same symbolic task
  model, same seeds, same order), each starting from a symbolic initial scene that
  :func:`get_env_state_for_initial_condition` turns into ``robot_obs`` / ``scene_obs`` (same
  block placement and random yaw as the official code);
* :data:`TASK_ORACLE_SPEC`: the official task definitions for ``calvin_env``'s task oracle;
  :data:`VAL_INSTRUCTIONS`: the validation annotation given for each subtask
  (``conf/annotations/new_playtable_validation.yaml``);
* :func:`calvin_observation` / :func:`to_env_action`: observations named like
  :mod:`mode_policy.data.convert_calvin` (``observation.state`` (1, 15) = ``robot_obs``,
  ``observation.images.static`` / ``observation.images.gripper`` (1, 3, H, W) float32 in
  [0, 1]; ``scene_obs`` is privileged and only given when asked for, as
  ``observation.environment_state`` or appended to the state) and CALVIN's relative
  actions with the gripper binarised to -1/1.

Pure Python, tested without the simulator. Building ``calvin_env``'s environment is
:mod:`mode_policy.envs.calvin_sim`; the protocol loop and its scoring are
:mod:`mode_policy.evaluation.calvin`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from itertools import product
from typing import Any

import numpy as np
import torch

from ..constants import ENV_STATE_KEY, IMAGES_PREFIX, STATE_KEY, TASK_KEY
from ..data.images import resize_images
from ..errors import ConfigError

__all__ = [
    "CALVIN_TASKS",
    "CAMERAS",
    "CHAIN_LENGTH",
    "NUM_SEQUENCES",
    "TASK_CATEGORIES",
    "TASK_ORACLE_SPEC",
    "VAL_INSTRUCTIONS",
    "calvin_observation",
    "check_task_subset",
    "fnv1_32",
    "get_env_state_for_initial_condition",
    "get_sequences",
    "initial_conditions",
    "to_env_action",
    "valid_chain",
]

NUM_SEQUENCES = 1000
CHAIN_LENGTH = 5
# --------------------------------------------------------------------------------------
# Symbolic task model (for chain generation), in the official task order
# --------------------------------------------------------------------------------------

_BLOCKS = ("red", "blue", "pink")
_SLIDER_SPOTS = ["slider_right", "slider_left"]
Rule = tuple[dict[str, Any], dict[str, Any]]  # (condition, effect); a list value = "any of"


def _task_rules() -> dict[str, list[Rule]]:
    """Task name -> alternative (condition, effect) rules on the symbolic scene state."""
    rules: dict[str, list[Rule]] = {}
    for verb in ("rotate", "push"):
        for b in _BLOCKS:
            for side in ("right", "left"):
                rules[f"{verb}_{b}_block_{side}"] = [({f"{b}_block": "table", "grasped": 0}, {f"{b}_block": "table"})]
    rules["move_slider_left"] = [({"slider": "right", "grasped": 0}, {"slider": "left"})]
    rules["move_slider_right"] = [({"slider": "left", "grasped": 0}, {"slider": "right"})]
    rules["open_drawer"] = [({"drawer": "closed", "grasped": 0}, {"drawer": "open"})]
    rules["close_drawer"] = [({"drawer": "open", "grasped": 0}, {"drawer": "closed"})]
    for b in _BLOCKS:
        lifted = {f"{b}_block": "grasped", "grasped": 1}
        rules[f"lift_{b}_block_table"] = [({f"{b}_block": "table", "grasped": 0}, lifted)]
        rules[f"lift_{b}_block_slider"] = [
            ({f"{b}_block": "slider_left", "slider": "right", "grasped": 0}, lifted),
            ({f"{b}_block": "slider_right", "slider": "left", "grasped": 0}, lifted),
        ]
        rules[f"lift_{b}_block_drawer"] = [({f"{b}_block": "drawer", "drawer": "open", "grasped": 0}, lifted)]
    rules["place_in_slider"] = [
        ({f"{b}_block": "grasped", "slider": side, "grasped": 1}, {f"{b}_block": f"slider_{side}", "grasped": 0})
        for b in _BLOCKS
        for side in ("right", "left")
    ]
    rules["place_in_drawer"] = [
        ({f"{b}_block": "grasped", "drawer": "open", "grasped": 1}, {f"{b}_block": "drawer", "grasped": 0})
        for b in _BLOCKS
    ]
    pairs = [(top, bottom) for top in _BLOCKS for bottom in _BLOCKS if top != bottom]
    rules["stack_block"] = [
        (
            {f"{t}_block": "grasped", f"{u}_block": "table", "grasped": 1},
            {f"{t}_block": "stacked_top", f"{u}_block": "stacked_bottom", "grasped": 0},
        )
        for t, u in pairs
    ]
    rules["unstack_block"] = [
        (
            {f"{t}_block": "stacked_top", f"{u}_block": "stacked_bottom", "grasped": 0},
            {f"{t}_block": "table", f"{u}_block": "table"},
        )
        for t, u in pairs
    ]
    rules["turn_on_lightbulb"] = [({"lightbulb": 0, "grasped": 0}, {"lightbulb": 1})]
    rules["turn_off_lightbulb"] = [({"lightbulb": 1, "grasped": 0}, {"lightbulb": 0})]
    rules["turn_on_led"] = [({"led": 0, "grasped": 0}, {"led": 1})]
    rules["turn_off_led"] = [({"led": 1, "grasped": 0}, {"led": 0})]
    rules["push_into_drawer"] = [
        (
            {
                f"{b}_block": "table",
                **{f"{o}_block": _SLIDER_SPOTS for o in _BLOCKS if o != b},
                "drawer": "open",
                "grasped": 0,
            },
            {f"{b}_block": "drawer", "grasped": 0},
        )
        for b in _BLOCKS
    ]
    return rules


TASK_RULES: dict[str, list[Rule]] = _task_rules()
#: The 34 CALVIN tasks in the official order (the order chain sampling draws from).
CALVIN_TASKS: list[str] = list(TASK_RULES)

#: Tasks of one category never appear twice in a chain.
TASK_CATEGORIES: dict[str, int] = {
    **{f"{v}_{b}_block_{s}": 1 for v in ("rotate", "push") for b in _BLOCKS for s in ("right", "left")},
    "move_slider_left": 2,
    "move_slider_right": 2,
    "open_drawer": 3,
    "close_drawer": 3,
    **{f"lift_{b}_block_table": 4 for b in _BLOCKS},
    **{f"lift_{b}_block_slider": 5 for b in _BLOCKS},
    **{f"lift_{b}_block_drawer": 6 for b in _BLOCKS},
    "place_in_slider": 7,
    "place_in_drawer": 7,
    "turn_on_lightbulb": 8,
    "turn_off_lightbulb": 8,
    "turn_on_led": 8,
    "turn_off_led": 8,
    "push_into_drawer": 9,
    "stack_block": 10,
    "unstack_block": 11,
}

#: Symbolic initial scenes: every combination, keys in this order (it matters for seeding).
_INITIAL_VALUES: dict[str, list[Any]] = {
    "led": [0, 1],
    "lightbulb": [0, 1],
    "slider": ["right", "left"],
    "drawer": ["closed", "open"],
    "red_block": ["table", "slider_right", "slider_left"],
    "blue_block": ["table", "slider_right", "slider_left"],
    "pink_block": ["table", "slider_right", "slider_left"],
    "grasped": [0],
}


def _holds(state: Mapping[str, Any], condition: Mapping[str, Any]) -> bool:
    return all(state[k] in v if isinstance(v, list) else state[k] == v for k, v in condition.items())


def _successors(state: Mapping[str, Any], task: str) -> list[dict[str, Any]]:
    return [{**state, **effect} for condition, effect in TASK_RULES[task] if _holds(state, condition)]


def valid_chain(state: Mapping[str, Any], chain: Sequence[str]) -> bool:
    """True when every task of ``chain`` applies to exactly one rule in turn from ``state``
    and no two tasks share a category (the official acceptance test)."""
    for task in chain:
        nexts = _successors(state, task)
        if len(nexts) != 1:
            return False
        state = nexts[0]
    categories = [TASK_CATEGORIES[t] for t in chain]
    return len(set(categories)) == len(categories)


def initial_conditions() -> list[dict[str, Any]]:
    """The symbolic initial scenes chains start from: lights, slider and drawer in any state,
    one or two blocks on the table and at most one block per sliding-cabinet spot (192 scenes)."""
    scenes = []
    for values in product(*_INITIAL_VALUES.values()):
        if values.count("table") in (1, 2) and values.count("slider_right") < 2 and values.count("slider_left") < 2:
            scenes.append(dict(zip(_INITIAL_VALUES, values)))
    return scenes


def _scene_chains(scene: Mapping[str, Any], index: int, count: int, tasks: Sequence[str]) -> list[tuple[str, ...]]:
    """The first ``count`` valid chains of scene ``index``'s stream: the official sampler draws
    ``RandomState(index).choice(tasks, 5, replace=False)`` until it has enough valid chains.
    ``choice`` without replacement is ``permutation(len(tasks))[:5]``, i.e. a shuffle of
    ``arange(len(tasks))``; shuffling a reused array gives the same draws, several times faster."""
    rng = np.random.RandomState(index)
    order = np.arange(len(tasks))
    perm = order.copy()
    categories = [TASK_CATEGORIES[t] for t in tasks]
    applicable = [len(_successors(scene, t)) == 1 for t in tasks]  # cheap rejection first
    chains: list[tuple[str, ...]] = []
    while len(chains) < count:
        perm[:] = order
        rng.shuffle(perm)
        picked = perm[:CHAIN_LENGTH].tolist()
        if not applicable[picked[0]] or len({categories[i] for i in picked}) < CHAIN_LENGTH:
            continue
        chain = tuple(tasks[i] for i in picked)
        if valid_chain(scene, chain):
            chains.append(chain)
    return chains


def _has_chain(
    state: Mapping[str, Any], tasks: Sequence[str], used: frozenset[int] = frozenset(), length: int = CHAIN_LENGTH
) -> bool:
    """Whether a valid chain of ``length`` of ``tasks`` (no category of ``used``) starts at ``state``."""
    if length == 0:
        return True
    for task in tasks:
        if TASK_CATEGORIES[task] in used:
            continue
        nexts = _successors(state, task)
        if len(nexts) == 1 and _has_chain(nexts[0], tasks, used | {TASK_CATEGORIES[task]}, length - 1):
            return True
    return False


def check_task_subset(tasks: Sequence[str] | None) -> tuple[str, ...]:
    """``tasks`` in CALVIN's task order (None: all 34); ConfigError for an unknown task or a
    subset spanning fewer categories than a chain has tasks."""
    if tasks is None:
        return tuple(CALVIN_TASKS)
    unknown = sorted(set(tasks) - set(CALVIN_TASKS))
    if unknown:
        raise ConfigError(f"unknown CALVIN task(s) {unknown}; known: {', '.join(CALVIN_TASKS)}")
    subset = tuple(t for t in CALVIN_TASKS if t in set(tasks))
    if len({TASK_CATEGORIES[t] for t in subset}) < CHAIN_LENGTH:
        raise ConfigError(
            f"the tasks {list(subset)} span fewer than {CHAIN_LENGTH} task categories, and a chain "
            f"never repeats a category: no chain of {CHAIN_LENGTH} can be built from them"
        )
    return subset


@lru_cache(maxsize=8)
def _sequences(
    num_sequences: int, tasks: tuple[str, ...]
) -> tuple[tuple[tuple[tuple[str, Any], ...], tuple[str, ...]], ...]:
    indexed = list(enumerate(initial_conditions()))
    if tasks != tuple(CALVIN_TASKS):
        indexed = [(i, scene) for i, scene in indexed if _has_chain(scene, tasks)]
        if not indexed:
            raise ConfigError(f"no initial scene has a valid chain of {CHAIN_LENGTH} of the tasks {list(tasks)}")
    base, extra = divmod(num_sequences, len(indexed))
    chains: list[tuple[dict[str, Any], tuple[str, ...]]] = []
    for k, (i, scene) in enumerate(indexed):
        count = base + (1 if k < extra else 0)  # the sizes of np.array_split(range(n), len(scenes))
        chains += [(scene, chain) for chain in _scene_chains(scene, i, count, tasks)]
    np.random.RandomState(0).shuffle(chains)  # the official final shuffle (seed 0)
    return tuple((tuple(scene.items()), chain) for scene, chain in chains)


def get_sequences(
    num_sequences: int = NUM_SEQUENCES, tasks: Sequence[str] | None = None
) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """The CALVIN evaluation chains: ``[(initial_condition, (task_1, ..., task_5)), ...]``.

    Same list, in the same order, as the official ``get_sequences(num_sequences)``: chains
    are spread evenly over the 192 initial scenes (:func:`initial_conditions`), sampled per
    scene with seed = scene index (5 distinct tasks, kept when valid), then shuffled with
    seed 0. Deterministic and cached; does not touch numpy's global random state. The
    rejection sampling is what it is: the full 1000-chain list takes about half a minute
    on one core (the official code spreads it over processes).

    ``tasks`` restricts the chains to a subset of the 34 tasks by the same rules: each draw
    is ``choice(subset, 5, replace=False)`` (the subset in CALVIN's task order), and the
    chains are spread over the scenes from which some valid chain of the subset starts, each
    keeping its seed; scenes with none are left out (the official sampler would never stop)."""
    if num_sequences < 1:
        raise ConfigError(f"num_sequences must be >= 1, got {num_sequences}")
    subset = check_task_subset(tasks)
    return [(dict(scene), chain) for scene, chain in _sequences(int(num_sequences), subset)]


# --------------------------------------------------------------------------------------
# Initial condition -> simulator state
# --------------------------------------------------------------------------------------

_ROBOT_OBS = np.array(
    [
        0.02586889,
        -0.2313129,
        0.5712808,
        3.09045411,
        -0.02908596,
        1.50013585,
        0.07999963,
        -1.21779124,
        1.03987629,
        2.11978254,
        -2.34205014,
        -0.87015899,
        1.64119093,
        0.55344928,
        1.0,
    ]
)
_SLIDER_LEFT = np.array([-2.40851662e-01, 9.24044687e-02, 4.60990009e-01])
_SLIDER_RIGHT = np.array([7.03416330e-02, 9.24044687e-02, 4.60990009e-01])
_TABLE_SPOTS = (
    np.array([5.00000896e-02, -1.20000177e-01, 4.59990009e-01]),
    np.array([2.29995412e-01, -1.19995140e-01, 4.59990010e-01]),
)
_YAW_RANGE = (np.pi / 2 - np.pi / 8, np.pi / 2 + np.pi / 8)


def fnv1_32(data: bytes) -> int:
    """32-bit FNV-1 with a zero initial value, as ``pyhash.fnv1_32()`` computes it (pyhash
    hashes a Python str as its UTF-16-LE bytes)."""
    h = 0
    for byte in data:
        h = (h * 0x01000193) & 0xFFFFFFFF
        h ^= byte
    return h


def get_env_state_for_initial_condition(condition: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(robot_obs (15,), scene_obs (24,))`` of a symbolic initial scene, as the official
    code builds them: fixed robot pose; slider/drawer/switch/lights from the scene; blocks on
    their cabinet spot or on one of two table spots (order shuffled), each with a random yaw,
    seeded by the FNV-1 hash of ``str(condition.values())``."""
    ordered = {k: condition[k] for k in _INITIAL_VALUES}  # the official key order
    seed = fnv1_32(str(ordered.values()).encode("utf-16-le"))
    rng = np.random.RandomState(seed)
    table = list(_TABLE_SPOTS)
    rng.shuffle(table)
    scene = np.zeros(24)
    if ordered["slider"] == "left":
        scene[0] = 0.28
    if ordered["drawer"] == "open":
        scene[1] = 0.22
    if ordered["lightbulb"] == 1:
        scene[3] = 0.088  # the switch that turns the bulb on is up
    scene[4] = ordered["lightbulb"]
    scene[5] = ordered["led"]
    spots = {"slider_right": _SLIDER_RIGHT, "slider_left": _SLIDER_LEFT}
    # red takes the first table spot; blue the second if red is on the table; pink the second
    red, blue, pink = ordered["red_block"], ordered["blue_block"], ordered["pink_block"]
    scene[6:9] = spots.get(red, table[0])
    scene[11] = rng.uniform(*_YAW_RANGE)
    scene[12:15] = spots.get(blue, table[1] if red == "table" else table[0])
    scene[17] = rng.uniform(*_YAW_RANGE)
    scene[18:21] = spots.get(pink, table[1])
    scene[23] = rng.uniform(*_YAW_RANGE)
    return _ROBOT_OBS.copy(), scene


# --------------------------------------------------------------------------------------
# Official task oracle and instructions
# --------------------------------------------------------------------------------------

#: Arguments of ``calvin_env.envs.tasks.Tasks`` (``conf/callbacks/rollout/tasks/new_playtable_tasks.yaml``).
TASK_ORACLE_SPEC: dict[str, list[Any]] = {
    **{
        f"rotate_{b}_block_{s}": ["rotate_object", f"block_{b}", deg]
        for b in _BLOCKS
        for s, deg in (("right", -60), ("left", 60))
    },
    **{
        f"push_{b}_block_{s}": ["push_object", f"block_{b}", dx, 0]
        for b in _BLOCKS
        for s, dx in (("right", 0.1), ("left", -0.1))
    },
    "move_slider_left": ["move_door_rel", "base__slide", 0.15],
    "move_slider_right": ["move_door_rel", "base__slide", -0.15],
    "open_drawer": ["move_door_rel", "base__drawer", 0.12],
    "close_drawer": ["move_door_rel", "base__drawer", -0.12],
    **{
        f"lift_{b}_block_{where}": ["lift_object", f"block_{b}", dz, "table", link]
        for b in _BLOCKS
        for where, dz, link in (
            ("table", 0.05, "base_link"),
            ("slider", 0.03, "plank_link"),
            ("drawer", 0.05, "drawer_link"),
        )
    },
    "place_in_slider": ["place_object", "table", "plank_link"],
    "place_in_drawer": ["place_object", "table", "drawer_link"],
    "stack_block": ["stack_objects"],
    "unstack_block": ["unstack_objects"],
    "turn_on_lightbulb": ["toggle_light", "lightbulb", 0, 1],
    "turn_off_lightbulb": ["toggle_light", "lightbulb", 1, 0],
    "turn_on_led": ["toggle_light", "led", 0, 1],
    "turn_off_led": ["toggle_light", "led", 1, 0],
    "push_into_drawer": [
        "push_object_into",
        ["block_red", "block_blue", "block_pink"],
        "table",
        "base_link",
        "table",
        "drawer_link",
    ],
}

#: The instruction given for each task in evaluation: the (only) validation annotation of
#: ``calvin_models/conf/annotations/new_playtable_validation.yaml`` in ``mees/calvin``
#: (commit fa03f01f), as the official evaluation gives it; verbatim, capital letters included.
VAL_INSTRUCTIONS: dict[str, str] = {
    **{
        f"rotate_{b}_block_{s}": f"take the {b} block and rotate it to the {s}"
        for b in _BLOCKS
        for s in ("right", "left")
    },
    **{f"push_{b}_block_{s}": f"go push the {b} block {s}" for b in _BLOCKS for s in ("right", "left")},
    "move_slider_left": "push the sliding door to the left side",
    "move_slider_right": "push the sliding door to the right side",
    "open_drawer": "pull the handle to open the drawer",
    "close_drawer": "push the handle to close the drawer",
    **{f"lift_{b}_block_table": f"grasp and lift the {b} block" for b in _BLOCKS},
    **{f"lift_{b}_block_slider": f"lift the {b} block from the sliding cabinet" for b in _BLOCKS},
    **{f"lift_{b}_block_drawer": f"Take the {b} block from the drawer" for b in _BLOCKS},
    "place_in_slider": "store the grasped block in the sliding cabinet",
    "place_in_drawer": "store the grasped block in the drawer",
    "push_into_drawer": "slide the block that it falls into the drawer",
    "stack_block": "stack the grasped block",
    "unstack_block": "remove the stacked block",
    "turn_on_lightbulb": "use the switch to turn on the light bulb",
    "turn_off_lightbulb": "use the switch to turn off the light bulb",
    "turn_on_led": "press the button to turn on the led light",
    "turn_off_led": "press the button to turn off the led light",
}


# --------------------------------------------------------------------------------------
# Observations and actions
# --------------------------------------------------------------------------------------


#: Policy image key -> key of ``obs["rgb_obs"]``.
CAMERAS: dict[str, str] = {f"{IMAGES_PREFIX}static": "rgb_static", f"{IMAGES_PREFIX}gripper": "rgb_gripper"}


def calvin_observation(
    obs: Mapping[str, Any],
    instruction: str,
    image_keys: Sequence[str] = (),
    image_sizes: Mapping[str, int] | None = None,
    include_scene_obs: bool = False,
    device: torch.device | str = "cpu",
    scene_in_state: bool = False,
) -> dict[str, Any]:
    """A batch of one from a calvin_env observation, named like the converted datasets
    (``scene_in_state``: the state is ``robot_obs`` then ``scene_obs``, (1, 39), as the
    converter's ``scene_in_state`` writes it)."""
    state = np.asarray(obs["robot_obs"], np.float32)
    if scene_in_state:
        state = np.concatenate([state, np.asarray(obs["scene_obs"], np.float32)])
    batch: dict[str, Any] = {
        STATE_KEY: torch.as_tensor(state).reshape(1, -1).to(device),  # (1, 15) or (1, 39)
        TASK_KEY: [instruction],
    }
    if include_scene_obs:
        scene = torch.as_tensor(np.asarray(obs["scene_obs"], np.float32))
        batch[ENV_STATE_KEY] = scene.reshape(1, -1).to(device)  # (1, 24)
    for key in image_keys:
        image = np.asarray(obs["rgb_obs"][CAMERAS[key]])[None]  # (1, H, W, 3) uint8
        size = (image_sizes or {}).get(key)
        if size:
            image = resize_images(image, size)
        batch[key] = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return batch


def to_env_action(action: Any) -> np.ndarray:
    """(1, 7) or (7,) policy output -> a fresh float64 (7,) relative action, gripper -1/1."""
    a = np.asarray(action.detach().cpu().numpy() if torch.is_tensor(action) else action, dtype=np.float64).reshape(-1)
    if a.shape != (7,):
        raise ConfigError(f"the policy returned an action of shape {a.shape}, CALVIN needs (1, 7)")
    a[:6] = np.clip(a[:6], -1.0, 1.0)
    a[6] = 1.0 if a[6] > 0 else -1.0
    return a
