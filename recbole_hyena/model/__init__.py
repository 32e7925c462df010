"""The plugin's models; every class exported here is found by ``recbole_hyena.utils.get_model``."""

from recbole_hyena.model.sequential_recommender import *  # noqa: F403
from recbole_hyena.model.sequential_recommender import __all__ as __all__
