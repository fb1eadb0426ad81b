"""Every training method's spec class by its method token — the job type a trainer consumes
(``halo.job.trainer-torch.sft``…)::

    from halo_schemas.methods import TRAINING_JOB_SPECS

    spec = TRAINING_JOB_SPECS["dpo"].model_validate(body)    # 400 naming the field when it does not validate

Supervised and preference methods come from :mod:`halo_schemas.training`, RL ones from :mod:`halo_schemas.rl`
(which builds on the former; neither imports this module, so there is no import cycle).
"""

from __future__ import annotations

from halo_schemas.rl import RL_JOB_SPECS
from halo_schemas.training import SUPERVISED_JOB_SPECS, TrainSpecBase

TRAINING_JOB_SPECS: dict[str, type[TrainSpecBase]] = {**SUPERVISED_JOB_SPECS, **RL_JOB_SPECS}
