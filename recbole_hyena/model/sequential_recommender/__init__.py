from recbole_hyena.model.sequential_recommender.hyenarec import HyenaRec
from recbole_hyena.model.sequential_recommender.zoo_adapters import GRU4Rec, SASRec

__all__ = ["GRU4Rec", "HyenaRec", "SASRec"]
