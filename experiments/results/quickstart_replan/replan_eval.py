import json
import sys
import time

import torch

from mode_policy import MoDEPolicy
from mode_policy.envs import metaworld as mw
from mode_policy.evaluation.metaworld import rollout_batch

tasks = mw.resolve_tasks("mt10")
for path in sys.argv[1:]:
    pol = MoDEPolicy.from_pretrained(path).eval()
    for n_act in [10, 5]:
        pol.config.n_action_steps = n_act
        for s in range(2):
            torch.manual_seed(100 + s)
            t0 = time.time()
            tl = [t for t in tasks for i in range(10)]
            seeds = [mw.eval_seed(t, i, 0) for t in tasks for i in range(10)]
            out = rollout_batch(pol, tl, seeds)
            per = {t: 0 for t in tasks}
            for t, ok in zip(tl, out["success"]):
                per[t] += int(ok)
            print(
                json.dumps(
                    {
                        "model": path,
                        "n_act": n_act,
                        "seed": 100 + s,
                        "mean": float(out["success"].mean()),
                        "weak": {t[:-3]: v for t, v in per.items() if v < 10},
                        "s": round(time.time() - t0),
                    }
                ),
                flush=True,
            )
