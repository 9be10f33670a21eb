"""CALVIN's simulator: ``calvin_env``'s ``PlayTableSimEnv``, built headless with only the
cameras a policy reads and the scene information the task oracle needs.

Two ways in, as :func:`make_calvin_env` chooses:

* without a dataset: calvin_env's own configuration (``conf/config_data_collection.yaml``
  with the static and gripper cameras, ``calvin_scene_<A|B|C|D>`` and the longer-finger
  Panda), which rebuilds what a CALVIN dataset's config describes;
* with a dataset: that dataset's ``validation/.hydra/merged_config.yaml``, as the official
  evaluation does (``calvin_env.envs.play_table_env.get_env``).

Either way the environment gets ``use_scene_info=True`` (the oracle reads the scene),
``show_gui=False``, no VR, and renders its cameras through pybullet's EGL plugin (which
runs on a CPU through Mesa) or, with ``renderer="tiny"``, pybullet's software renderer.

``calvin_env`` is not on the package registries: :data:`INSTALL_HINT` says how to install it
(``scripts/install/install_calvin.sh`` does it).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..errors import ConfigError, SimulatorError
from .calvin import CAMERAS
from .rendering import setup_headless_rendering

__all__ = [
    "CALVIN_ENV_COMMIT",
    "INSTALL_HINT",
    "RENDERERS",
    "SCENES",
    "import_calvin_env",
    "make_calvin_env",
    "dataset_config_path",
]

CALVIN_ENV_COMMIT = "797142c588c21e76717268b7b430958dbd13bf48"
"""The ``mees/calvin_env`` commit this wrapper was checked against (its HEAD; the older commit
``mees/calvin`` pins leaves the button off after a reset with the LED on)."""
SCENES = ("A", "B", "C", "D")
RENDERERS = ("egl", "tiny")
INSTALL_HINT = (
    "calvin_env (CALVIN's simulator) is not on the package registries: run "
    "scripts/install/install_calvin.sh [https://github.com/mees/calvin_env.git] [BUILD_DIR], which clones it "
    f"into BUILD_DIR at commit {CALVIN_ENV_COMMIT[:7]}, installs pybullet==3.2.7 and its other requirements "
    "(cloudpickle gitpython gym hydra-core hydra-colorlog matplotlib numba numpy numpy-quaternion omegaconf "
    "opencv-python pandas scipy), then runs `pip install --no-deps -e BUILD_DIR` (keep BUILD_DIR a git checkout: "
    "calvin_env reads its commit when it builds an environment); no dataset is needed, the scene comes from "
    "calvin_env's own configs (docs/guides/calvin.md)"
)
"""How to install calvin_env, in one line (an error message is one line)."""


def import_calvin_env() -> SimpleNamespace:
    """calvin_env's task oracle class (``Tasks``) and its config folder (``conf_dir``);
    SimulatorError with the install steps when it is missing or broken."""
    try:
        # gym prints a banner about its own end of life to stderr at import: not the user's concern
        with contextlib.redirect_stderr(io.StringIO()):
            import calvin_env
            from calvin_env.envs.play_table_env import PlayTableSimEnv  # noqa: F401  (pybullet, gym, hydra)
            from calvin_env.envs.tasks import Tasks
    except ImportError as e:
        raise SimulatorError(f"cannot import calvin_env ({e}); {INSTALL_HINT}") from e
    conf_dir = Path(calvin_env.__file__).resolve().parents[1] / "conf"
    if not (conf_dir / "config_data_collection.yaml").is_file():
        raise SimulatorError(
            f"calvin_env at {calvin_env.__file__} has no conf/ folder beside it: install it "
            f"editable from a checkout; {INSTALL_HINT}"
        )
    return SimpleNamespace(Tasks=Tasks, conf_dir=conf_dir)


def dataset_config_path(dataset_path: str | Path) -> Path:
    """The env config of a CALVIN dataset: ``<path>/.hydra/merged_config.yaml`` where ``path``
    is the dataset's validation folder, else ``<path>/validation/.hydra/merged_config.yaml``."""
    path = Path(dataset_path)
    for folder in (path, path / "validation"):
        config = folder / ".hydra" / "merged_config.yaml"
        if config.is_file():
            return config
    raise ConfigError(
        f"{path} is not a CALVIN dataset: neither {path}/.hydra/merged_config.yaml nor "
        f"{path}/validation/.hydra/merged_config.yaml exists"
    )


def _camera_names(image_keys: Sequence[str]) -> list[str]:
    """``observation.images.static`` -> ``static`` (calvin_env's camera names)."""
    unknown = [k for k in image_keys if k not in CAMERAS]
    if unknown:
        raise ConfigError(f"unknown CALVIN camera key(s) {unknown}; available: {list(CAMERAS)}")
    return [CAMERAS[k].removeprefix("rgb_") for k in image_keys]


def _compose_default(conf_dir: Path, scene: str) -> Any:
    """calvin_env's data-collection config for ``scene``, as a CALVIN dataset records it."""
    from hydra import compose, initialize_config_dir

    overrides = [
        "cameras=static_and_gripper",
        f"scene=calvin_scene_{scene}",
        "robot=panda_longer_finger",
        "use_vr=false",
    ]
    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        return compose(config_name="config_data_collection", overrides=overrides)


def make_calvin_env(
    image_keys: Sequence[str] = (),
    scene: str = "D",
    dataset_path: str | Path | None = None,
    renderer: str = "egl",
) -> Any:
    """A headless ``PlayTableSimEnv`` with the cameras of ``image_keys`` only (none: physics
    only, nothing rendered), scene info on for the task oracle.

    ``scene`` picks calvin_env's ``calvin_scene_<scene>`` when no ``dataset_path`` is given; with
    one, the dataset's own config (:func:`dataset_config_path`) decides the scene."""
    if renderer not in RENDERERS:
        raise ConfigError(f"renderer={renderer!r}: expected one of {', '.join(RENDERERS)}")
    if dataset_path is None and scene not in SCENES:
        raise ConfigError(f"scene={scene!r}: expected one of {', '.join(SCENES)}")
    cameras = _camera_names(image_keys)
    calvin = import_calvin_env()
    if renderer == "egl":
        setup_headless_rendering("egl")
    import hydra
    from omegaconf import OmegaConf

    if dataset_path is None:
        config = _compose_default(calvin.conf_dir, scene)
    else:
        config = OmegaConf.load(dataset_config_path(dataset_path))
    config = copy.deepcopy(config)
    OmegaConf.set_struct(config, False)  # composed configs refuse deletions
    missing = [c for c in cameras if c not in config.cameras]
    if missing:
        raise ConfigError(f"the CALVIN env config has no camera(s) {missing}; it has {list(config.cameras)}")
    for name in [c for c in config.cameras if c not in cameras]:
        del config.cameras[name]
    use_egl = renderer == "egl" and bool(cameras)  # nothing to render: no renderer plugin
    with hydra.initialize_config_dir(config_dir=str(calvin.conf_dir), version_base=None):
        return hydra.utils.instantiate(config.env, show_gui=False, use_vr=False, use_scene_info=True, use_egl=use_egl)
