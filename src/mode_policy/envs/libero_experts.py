"""Scripted LIBERO experts: pick-and-place state machines driven by privileged simulator state.

A LIBERO task's goal (its BDDL ``:goal``, as parsed by LIBERO: ``env.parsed_problem["goal_state"]``)
is read into a plan (:func:`plan_task`): each ``(On X Y)`` / ``(In X Y)`` whose ``X`` is a movable
object becomes one :class:`PickPlace` (grasp ``X``, put it on or into ``Y``, an object or a
region site); any other predicate (``Open``, ``Close``, ``Turnon``, ``Turnoff``) is a skill the
expert does not have, and the task is refused with :class:`UnsupportedTaskError`.

:class:`LiberoExpert` plays the plan with LIBERO's own controller (robosuite ``OSC_POSE``) through
its 7-D action, the convention of LIBERO's human data: ``[dx, dy, dz, drx, dry, drz, gripper]``,
each in [-1, 1]; the position part is scaled by 0.05 m and the rotation part (axis-angle, world
frame) by 0.5 rad per step by the controller; gripper -1 opens, +1 closes. Per pick-and-place
the phases are: ``hover`` (open, above the grasp point, fingers turned across the object),
``descend``, ``close``, ``lift``, ``carry`` (above the target, high enough to clear what lies
between), ``lower``, ``release``, ``retreat``; a grasp that did not lift the object is retried.

Everything it uses is read from the simulator each step (object and fixture geometry: the
world boxes of their colliding geoms; the gripper's site pose): no per-task waypoint. Grasps:
an upright object is taken from above across its narrow horizontal side, at most 3 cm below
its top; a bowl or mug (wider than the open gripper) by its rim, on the side farthest from
other objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SimulatorError

__all__ = [
    "PHASES",
    "LiberoExpert",
    "PickPlace",
    "Scene",
    "UnsupportedTaskError",
    "plan_task",
]

#: Phases of one pick-and-place, in order ("done" after the last one of the plan).
PHASES = ("hover", "descend", "close", "lift", "carry", "lower", "release", "retreat")

POS_SCALE = 0.05  # m per unit of action (OSC_POSE output_max)
ROT_SCALE = 0.5  # rad per unit of action
#: The gripper pointing down, fingers closing along the world y axis (columns: site axes in world).
R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
GRIPPER_OPEN_WIDTH = 0.078  # m between the fingers, fully open
RIM_OBJECTS = ("bowl", "mug", "ramekin")


class UnsupportedTaskError(SimulatorError):
    """The task's goal needs a skill the scripted expert does not have."""


@dataclass(frozen=True)
class PickPlace:
    """Grasp movable object ``obj`` and put it ``relation`` (``"on"`` / ``"in"``) ``target``
    (an object, a fixture or a region site of the scene)."""

    obj: str
    target: str
    relation: str


def plan_task(goal_state: list[list[str]], objects: Any) -> list[PickPlace]:
    """The pick-and-places that achieve a LIBERO goal (``parsed_problem["goal_state"]``:
    lists like ``["on", "akita_black_bowl_1", "plate_1"]``), in the goal's order. ``objects``:
    names of the movable objects. Raises :class:`UnsupportedTaskError` for other predicates."""
    plan = []
    for predicate in goal_state:
        name = str(predicate[0]).lower()
        if name in ("on", "in") and len(predicate) == 3 and predicate[1] in objects:
            plan.append(PickPlace(predicate[1], predicate[2], name))
        else:
            raise UnsupportedTaskError(
                f"goal predicate {' '.join(map(str, predicate))!r}: the scripted expert can only pick up an "
                "object and put it on or in something (no open/close/turn on/turn off skill)"
            )
    if not plan:
        raise UnsupportedTaskError("the task's goal is empty")
    return plan


# --------------------------------------------------------------------------------------
# Privileged scene state
# --------------------------------------------------------------------------------------


class Scene:
    """Read-only view of a LIBERO env's simulator: gripper pose, object boxes, surfaces.

    ``env``: a LIBERO ``ControlEnv`` / ``OffScreenRenderEnv`` (or its inner robosuite env)."""

    def __init__(self, env: Any) -> None:
        self.env = getattr(env, "env", env)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the model (after a hard reset the sim, and its ids, are new)."""
        import mujoco

        env = self.env
        self.model = env.sim.model._model
        self.data = env.sim.data._data
        self.robot = env.robots[0]
        self.site_id = int(self.robot.eef_site_id)
        m = self.model
        children: dict[int, list[int]] = {}
        for b in range(1, m.nbody):
            children.setdefault(int(m.body_parentid[b]), []).append(b)

        def subtree(b: int) -> list[int]:
            out = [b]
            for c in children.get(b, []):
                out += subtree(c)
            return out

        collides = (m.geom_contype != 0) | (m.geom_conaffinity != 0)
        self.geoms: dict[str, np.ndarray] = {}
        for name in [*env.objects_dict, *env.fixtures_dict]:
            bodies = subtree(int(env.obj_body_id[name]))
            self.geoms[name] = np.flatnonzero(np.isin(m.geom_bodyid, bodies) & collides)
        robot_bodies = set()
        for b in range(m.nbody):
            body = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b) or ""
            if body.startswith(("robot0_", "gripper0_", "mount0")):
                robot_bodies.add(b)
        self.scene_geoms = np.flatnonzero(collides & ~np.isin(m.geom_bodyid, list(robot_bodies)) & (m.geom_bodyid != 0))
        self._corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)
        #: the lowest object bottom: the height of an empty spot
        self.floor_z = float(min(self.box(n)[0][2] for n in env.objects_dict))

    # -- gripper
    @property
    def eef_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.site_id].copy()

    @property
    def eef_rot(self) -> np.ndarray:
        return self.data.site_xmat[self.site_id].reshape(3, 3).copy()

    @property
    def gripper_width(self) -> float:
        """Distance between the fingers (m)."""
        q = self.data.qpos[self.robot._ref_gripper_joint_pos_indexes]
        return float(abs(q[0]) + abs(q[-1]))

    def wrist_joint(self) -> tuple[float, tuple[float, float]]:
        """Position and range of the arm's last (wrist) joint."""
        jid = int(self.robot.joint_indexes[-1])
        return float(self.data.qpos[self.model.jnt_qposadr[jid]]), tuple(map(float, self.model.jnt_range[jid]))

    # -- geometry
    def _geom_boxes(self, geoms: np.ndarray) -> np.ndarray:
        """World axis-aligned boxes (G, 2, 3) (lo, hi) of geoms."""
        m, d = self.model, self.data
        aabb = m.geom_aabb[geoms]  # (G, 6): centre, half sizes in the geom frame
        local = self._corners[None] * aabb[:, None, 3:] + aabb[:, None, :3]  # (G, 8, 3)
        rot = d.geom_xmat[geoms].reshape(-1, 3, 3)  # (G, 3, 3)
        world = np.einsum("gij,gkj->gki", rot, local) + d.geom_xpos[geoms][:, None]  # (G, 8, 3)
        return np.stack([world.min(1), world.max(1)], axis=1)

    def box(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World box (lo (3,), hi (3,)) of an object or fixture (its colliding geoms)."""
        boxes = self._geom_boxes(self.geoms[name])
        return boxes[:, 0].min(0), boxes[:, 1].max(0)

    def local_extent(self, name: str) -> np.ndarray:
        """Half extents (3,) of an object along its own body axes."""
        m, d = self.model, self.data
        body = int(self.env.obj_body_id[name])
        rot, pos = d.xmat[body].reshape(3, 3), d.xpos[body]
        pts = []
        for g in self.geoms[name]:
            aabb = m.geom_aabb[g]
            world = (self._corners * aabb[3:] + aabb[:3]) @ d.geom_xmat[g].reshape(3, 3).T + d.geom_xpos[g]
            pts.append((world - pos) @ rot)
        p = np.concatenate(pts)
        return (p.max(0) - p.min(0)) / 2

    def body_axes(self, name: str) -> np.ndarray:
        return self.data.xmat[int(self.env.obj_body_id[name])].reshape(3, 3).copy()

    def site_pos(self, name: str) -> np.ndarray | None:
        site = self.env.object_sites_dict.get(name)
        if site is None:
            return None
        import mujoco

        sid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, site.name)
        return self.data.site_xpos[sid].copy() if sid >= 0 else None

    def height_at(self, xy: np.ndarray, radius: float, exclude: tuple[str, ...] = ()) -> float:
        """Top z of the scene's colliding geoms within ``radius`` of ``xy`` (floor if none),
        leaving out the geoms of the objects in ``exclude``."""
        return self.height_along(xy, xy, radius, exclude)

    def height_along(self, a: np.ndarray, b: np.ndarray, radius: float, exclude: tuple[str, ...] = ()) -> float:
        """Highest top (z) of the scene near the straight path from ``a`` to ``b`` (xy)."""
        skip = np.concatenate([self.geoms[n] for n in exclude]) if exclude else np.empty(0, int)
        boxes = self._geom_boxes(np.setdiff1d(self.scene_geoms, skip))  # (G, 2, 3)
        n = max(2, int(np.linalg.norm(b - a) / 0.02) + 1)
        points = a[None] + (b - a)[None] * np.linspace(0.0, 1.0, n)[:, None]  # (P, 2)
        lo, hi = boxes[None, :, 0, :2] - radius, boxes[None, :, 1, :2] + radius  # (1, G, 2)
        near = np.all((lo <= points[:, None]) & (points[:, None] <= hi), axis=2).any(axis=0)  # (G,)
        return float(max(self.floor_z, boxes[near, 1, 2].max())) if near.any() else self.floor_z

    def object_names(self) -> list[str]:
        return list(self.env.objects_dict)


# --------------------------------------------------------------------------------------
# The state machine
# --------------------------------------------------------------------------------------


def _axis_angle(rot: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> axis-angle (3,)."""
    cos = (np.trace(rot) - 1.0) / 2.0
    angle = math.acos(min(1.0, max(-1.0, cos)))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-9:  # angle ~ pi: axis from the symmetric part
        w, v = np.linalg.eigh((rot + rot.T) / 2.0)
        axis = v[:, np.argmax(w)]
        return axis * angle
    return axis / norm * angle


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _wrap_half(angle: float) -> float:
    """Angle modulo pi into [-pi/2, pi/2) (a parallel gripper is symmetric)."""
    return (angle + math.pi / 2) % math.pi - math.pi / 2


@dataclass
class _Grasp:
    point: np.ndarray  # gripper site target (3,)
    yaw: float  # gripper yaw about world z (0: fingers close along world y)
    hover_z: float
    bottom: np.ndarray  # the object's lower box corner when the grasp was planned (3,)
    rim: int = -1  # which of the 8 rim points (-1: not a rim grasp)


class LiberoExpert:
    """Scripted expert of one LIBERO task: call it each step, it returns the 7-D action.

    ``env``: a LIBERO env (after ``reset()``/``set_init_state``). ``plan``: the pick-and-places
    (default: :func:`plan_task` of the env's goal). ``speed``: largest position action (1 = 5 cm
    per step). ``max_retries``: grasps retried per object.
    """

    def __init__(self, env: Any, plan: list[PickPlace] | None = None, speed: float = 0.6, max_retries: int = 2) -> None:
        inner = getattr(env, "env", env)
        self.plan = plan if plan is not None else plan_task(inner.parsed_problem["goal_state"], inner.objects_dict)
        self.env = env
        self.speed = float(speed)
        self.max_retries = int(max_retries)
        self.scene = Scene(env)
        self.reset()

    def reset(self) -> None:
        """Start the plan from its first pick-and-place (call after each env reset)."""
        self.scene.refresh()
        self.step_index = 0
        self.phase = PHASES[0]
        self.phase_steps = 0
        self.retries = 0
        self._rims_tried: set[int] = set()  # rim points grasped so far of the current object
        self.history: list[tuple[int, str]] = [(0, self.phase)]
        self._grasp: _Grasp | None = None
        self._carry_z = 0.0
        self._lift_start_z = 0.0
        self._descend_low, self._descend_moved = 0.0, 0
        self._release_z = 0.0
        self._hold_xy: np.ndarray | None = None

    @property
    def done(self) -> bool:
        return self.phase == "done"

    @property
    def current(self) -> PickPlace | None:
        return self.plan[self.step_index] if self.step_index < len(self.plan) else None

    # -- planning helpers
    def _grasp_for(self, pp: PickPlace) -> _Grasp:
        scene = self.scene
        lo, hi = scene.box(pp.obj)
        center = (lo + hi) / 2
        height = hi[2] - lo[2]
        others = [n for n in scene.object_names() if n != pp.obj]
        eef = scene.eef_pos
        if any(k in pp.obj for k in RIM_OBJECTS) and max(hi[:2] - lo[:2]) > 0.06:
            # rim grasp: the rim point farthest from other objects, fingers across the wall
            radius = min(hi[:2] - lo[:2]) / 2
            best, best_score = None, -1.0
            for k in range(8):
                ang = k * math.pi / 4
                direction = np.array([math.cos(ang), math.sin(ang)])
                p = center[:2] + direction * (radius - 0.012)
                clear = min(
                    (float(np.linalg.norm(np.clip(p, *(b[:2] for b in scene.box(o))) - p)) for o in others),
                    default=1.0,
                )
                # a rim point beside something taller than the object (a cabinet, an object on
                # it) is where the hand collides on the way down: take any other first
                tall = scene.height_at(p, 0.05, exclude=(pp.obj,)) > hi[2] + 0.02
                # prefer rim points clear of other objects, then the side facing the robot (-x);
                # a retry takes a side not tried yet (the fingers may have pinched a drawer's wall)
                score = min(clear, 0.06) - 0.01 * direction[0] - 1.0 * tall - 2.0 * (k in self._rims_tried)
                if score > best_score:
                    best, best_score = (p, ang, k), score
            assert best is not None
            p, ang, rim = best
            point = np.array([p[0], p[1], hi[2] - min(0.02, height / 2)])
            yaw = _wrap_half(ang - math.pi / 2)  # fingers along the radial direction (world y at yaw 0)
        else:
            rim = -1
            axes = scene.body_axes(pp.obj)
            ext = scene.local_extent(pp.obj)
            # the body's horizontal axis along which the object is narrowest
            horizontal = [i for i in range(3) if abs(axes[2, i]) < 0.7]
            narrow = min(horizontal, key=lambda i: ext[i]) if horizontal else 0
            direction = axes[:2, narrow]
            yaw = _wrap_half(math.atan2(direction[1], direction[0]) - math.pi / 2)
            depth = min(0.03, height / 2)
            point = np.array([center[0], center[1], max(hi[2] - depth, lo[2] + 0.012)])
        clearance = scene.height_along(eef[:2], point[:2], 0.05, exclude=(pp.obj,))
        hover = max(hi[2], clearance) + 0.06
        return _Grasp(point, self._reachable_yaw(yaw), hover, lo.copy(), rim)

    def _reachable_yaw(self, yaw: float) -> float:
        """Of the two gripper yaws that grasp alike (``yaw`` and ``yaw + pi``), the one the last
        wrist joint reaches within its range (turning it by +q turns a downward gripper by -q
        about the world z axis); an absolute yaw, not wrapped."""
        scene = self.scene
        now = math.atan2(scene.eef_rot[1, 0], scene.eef_rot[0, 0]) - math.pi / 2
        q7, (lo, hi) = scene.wrist_joint()
        options = []
        for cand in (yaw, yaw + math.pi, yaw - math.pi):
            delta = (cand - now + math.pi) % (2 * math.pi) - math.pi
            margin = min(q7 - delta - lo, hi - (q7 - delta))
            options.append((margin < 0.25, abs(delta), now + delta))
        return min(options)[2]

    def _target_xy_and_surface(self, pp: PickPlace) -> tuple[np.ndarray, float]:
        """Where the object's centre goes (xy) and the surface height there."""
        scene = self.scene
        site = scene.site_pos(pp.target)
        if pp.target in scene.geoms:
            lo, hi = scene.box(pp.target)
            xy = (lo[:2] + hi[:2]) / 2
        elif site is not None:
            xy = site[:2]
        else:
            raise UnsupportedTaskError(
                f"target {pp.target!r} is neither an object, a fixture nor a region of the scene"
            )
        surface = scene.height_at(xy, 0.01, exclude=(pp.obj,))
        if pp.target in scene.geoms and pp.relation == "on":
            surface = max(surface, scene.box(pp.target)[1][2])
        return xy, surface

    # -- control
    def _action(self, target: np.ndarray, yaw: float, gripper: float, speed: float | None = None) -> np.ndarray:
        scene = self.scene
        speed = self.speed if speed is None else speed
        pos = np.clip((target - scene.eef_pos) / POS_SCALE * 1.5, -speed, speed)
        rot_target = _rot_z(yaw) @ R_DOWN
        rot = np.clip(_axis_angle(rot_target @ scene.eef_rot.T) / ROT_SCALE * 1.5, -0.5, 0.5)
        return np.concatenate([pos, rot, [gripper]])

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0
        self.history.append((self.step_index, phase))

    def __call__(self, obs: Any = None) -> np.ndarray:
        """The next action (7,) for the current simulator state (``obs`` is not needed)."""
        action = self._next()
        self.phase_steps += 1
        return action

    def _next(self) -> np.ndarray:
        scene = self.scene
        pp = self.current
        eef = scene.eef_pos
        if pp is None:
            self.phase = "done"
            return np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
        if self._grasp is None or (
            # an object still settling from its placement (into a drawer, off a cabinet) moved
            # since the grasp was planned: plan it again while the hand is on its way
            self.phase == "hover" and np.abs(scene.box(pp.obj)[0] - self._grasp.bottom).max() > 0.01
        ):
            self._grasp = self._grasp_for(pp)
        g = self._grasp
        yaw_err = abs(_wrap_half(math.atan2(scene.eef_rot[1, 0], scene.eef_rot[0, 0]) - (g.yaw + math.pi / 2)))
        if self.phase == "hover":
            target = np.array([g.point[0], g.point[1], g.hover_z])
            if eef[2] < g.hover_z - 0.02 and np.linalg.norm(eef[:2] - g.point[:2]) > 0.02:
                target = np.array([eef[0], eef[1], g.hover_z])  # rise first, then go over
            close = np.linalg.norm(target - eef) < 0.012 and yaw_err < 0.08
            if close or self.phase_steps > 120:
                self._enter("descend")
            return self._action(target, g.yaw, -1.0)
        if self.phase == "descend":
            target = g.point
            # a long way down (from above a tall fixture) takes more than 60 steps: give up only
            # when the hand stops getting lower (it touches something)
            if self.phase_steps == 0 or eef[2] < self._descend_low - 0.002:
                self._descend_low, self._descend_moved = float(eef[2]), self.phase_steps
            stalled = self.phase_steps - self._descend_moved > 10
            if np.linalg.norm(target - eef) < 0.008 or (self.phase_steps > 60 and stalled) or self.phase_steps > 150:
                self._enter("close")
            return self._action(target, g.yaw, -1.0, speed=0.4)
        if self.phase == "close":
            if self.phase_steps >= 12:
                self._lift_start_z = scene.box(pp.obj)[0][2]
                xy, surface = self._target_xy_and_surface(pp)
                lo, _ = scene.box(pp.obj)
                below = eef[2] - lo[2]  # gripper height above the object's bottom
                path = scene.height_along(eef[:2], xy, 0.08, exclude=(pp.obj,))
                self._carry_z = max(path, surface) + below + 0.05
                self._enter("lift")
            return self._action(g.point, g.yaw, 1.0, speed=0.2)
        if self.phase == "lift":
            target = np.array([g.point[0], g.point[1], self._carry_z])
            if self.phase_steps > 8 and scene.box(pp.obj)[0][2] < self._lift_start_z + 0.01:
                if scene.gripper_width < 0.004 or self.phase_steps > 25:  # missed: open and try again
                    if self.retries < self.max_retries:
                        self.retries += 1
                        self._rims_tried.add(g.rim)
                        self._grasp = None
                        self._enter("hover")
                        return self._action(eef + np.array([0, 0, 0.05]), g.yaw, -1.0)
            if eef[2] > self._carry_z - 0.015 or self.phase_steps > 80:
                self._enter("carry")
            return self._action(target, g.yaw, 1.0)
        if self.phase == "carry":
            xy, surface = self._target_xy_and_surface(pp)
            lo, hi = scene.box(pp.obj)
            offset = eef[:2] - (lo[:2] + hi[:2]) / 2  # keep the object's centre above the target
            target = np.array([xy[0] + offset[0], xy[1] + offset[1], self._carry_z])
            if np.linalg.norm(target[:2] - eef[:2]) < 0.01 or self.phase_steps > 150:
                below = eef[2] - lo[2]
                drop = 0.03 if pp.relation == "in" else 0.012
                self._release_z = surface + below + drop
                self._hold_xy = target[:2]
                self._enter("lower")
            return self._action(target, g.yaw, 1.0)
        if self.phase == "lower":
            assert self._hold_xy is not None
            target = np.array([self._hold_xy[0], self._hold_xy[1], self._release_z])
            if abs(eef[2] - self._release_z) < 0.01 or self.phase_steps > 60:
                self._enter("release")
            return self._action(target, g.yaw, 1.0, speed=0.4)
        if self.phase == "release":
            if self.phase_steps >= 8:
                self._enter("retreat")
            return self._action(np.array([eef[0], eef[1], self._release_z]), g.yaw, -1.0, speed=0.2)
        if self.phase == "retreat":
            target = np.array([eef[0], eef[1], self._release_z + 0.08])
            if eef[2] > self._release_z + 0.06 or self.phase_steps > 30:
                self.step_index += 1
                self.retries = 0
                self._rims_tried.clear()
                self._grasp = None
                self._enter("hover" if self.current is not None else "done")
            return self._action(target, g.yaw, -1.0)
        return np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])


# --------------------------------------------------------------------------------------
# The expert's own success on the benchmark's fixed initial states
# --------------------------------------------------------------------------------------


def evaluate_expert(
    suite: str,
    n_init_states: int = 50,
    tasks: list[int] | None = None,
    max_steps: int | None = None,
    num_settle_steps: int = 10,
    seed: int = 0,
    progress: bool = True,
    on_task: Any = None,
    done: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Success of :class:`LiberoExpert` per task of ``suite``, played like the evaluation
    (:func:`~mode_policy.envs.libero.start_rollout` from initial state ``r`` for ``r <
    n_init_states``, the suite's step limit, success = the env's ``done``), state only.

    Returns ``{task name: {"task_id", "instruction", "successes", "episodes", "lengths",
    "supported"}}``; a task the expert cannot do has ``supported: False`` and the reason.
    ``on_task(name, record)`` is called as each task finishes (to save partial results);
    tasks already in ``done`` (an earlier partial result) are not played again."""
    import contextlib
    import io
    from pathlib import Path

    from tqdm.auto import tqdm

    from .libero import (
        DEFAULT_MAX_STEPS,
        SUITE_MAX_STEPS,
        import_libero,
        load_init_states,
        load_suite,
        make_libero_env,
        start_rollout,
    )

    lib = import_libero()
    task_suite = load_suite(lib, suite)
    task_ids = list(range(task_suite.n_tasks)) if tasks is None else list(tasks)
    steps = int(max_steps if max_steps is not None else SUITE_MAX_STEPS.get(suite, DEFAULT_MAX_STEPS))
    results: dict[str, dict[str, Any]] = dict(done or {})
    bar = tqdm(total=len(task_ids) * n_init_states, desc=f"expert {suite}", unit="ep", disable=not progress)
    for t in task_ids:
        task = task_suite.get_task(t)
        if task.name in results and results[task.name].get("episodes_requested") == n_init_states:
            bar.update(n_init_states)
            continue
        bddl = Path(lib.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        record: dict[str, Any] = {"task_id": t, "instruction": task.language, "episodes_requested": n_init_states}
        with contextlib.redirect_stdout(io.StringIO()):
            env = make_libero_env(lib, bddl, [], 128, steps + num_settle_steps + 10)
        try:
            plan_task(env.env.parsed_problem["goal_state"], env.env.objects_dict)
        except UnsupportedTaskError as e:
            record |= {"supported": False, "reason": str(e), "successes": 0, "episodes": 0, "lengths": []}
            results[task.name] = record
            bar.update(n_init_states)
            env.close()
            if on_task is not None:
                on_task(task.name, record)
            continue
        init_states = load_init_states(lib, task_suite, t)
        lengths, successes = [], 0
        for r in range(min(n_init_states, len(init_states))):
            start_rollout(env, init_states[r], seed + r, num_settle_steps)
            expert = LiberoExpert(env)
            length = steps
            for i in range(steps):
                _, _, done, _ = env.step(np.clip(expert(), -1.0, 1.0))
                if done:
                    successes += 1
                    length = i + 1
                    break
            lengths.append(length)
            bar.update(1)
            bar.set_postfix(task=t, success=f"{successes}/{len(lengths)}")
        env.close()
        record |= {"supported": True, "successes": successes, "episodes": len(lengths), "lengths": lengths}
        results[task.name] = record
        if on_task is not None:
            on_task(task.name, record)
    bar.close()
    return results
