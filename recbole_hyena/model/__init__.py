"""The plugin's models; every class exported here is found by ``recbole_hyena.utils.get_model``."""

import torch

from recbole_hyena.model.sequential_recommender import *  # noqa: F403
from recbole_hyena.model.sequential_recommender import __all__ as __all__

# Importing any RecBole sequential model runs recbole/model/sequential_recommender/sine.py, which
# turns autograd anomaly detection on for the whole process: every backward op then checks its
# output for NaN, which made training here 3-5x slower. Nothing of ours needs it.
torch.autograd.set_detect_anomaly(False)
