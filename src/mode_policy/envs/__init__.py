"""Simulator wrappers: Meta-World (:mod:`.metaworld`), LIBERO (:mod:`.libero`), CALVIN
(:mod:`.calvin`), and the headless rendering set-up they need (:mod:`.rendering`).
Evaluation protocols live in :mod:`mode_policy.evaluation`."""
