from recbole_hyena.model.sequential_recommender.flashsasrec import FlashSASRec
from recbole_hyena.model.sequential_recommender.hyenarec import HyenaRec
from recbole_hyena.model.sequential_recommender.zoo_adapters import GRU4Rec, SASRec

__all__ = ["FlashSASRec", "GRU4Rec", "HyenaRec", "SASRec"]
