from recbole_hyena.model.sequential_recommender.eulerformer import EulerFormer
from recbole_hyena.model.sequential_recommender.flashsasrec import FlashSASRec
from recbole_hyena.model.sequential_recommender.hstu import HSTU
from recbole_hyena.model.sequential_recommender.hyenarec import (
    AtrousHyena,
    HyenaRec,
    HyenaRecChebyshev,
    HyenaRecFourier,
    HyenaRecWoGLU,
    HyenaRecWoPK,
    HyenaVanilla,
)
from recbole_hyena.model.sequential_recommender.hytrec import HyTRec
from recbole_hyena.model.sequential_recommender.lrurec import LRURec
from recbole_hyena.model.sequential_recommender.mamba4rec import Mamba4Rec
from recbole_hyena.model.sequential_recommender.zoo_adapters import NARM, GRU4Rec, SASRec

__all__ = [
    "AtrousHyena",
    "EulerFormer",
    "FlashSASRec",
    "GRU4Rec",
    "HSTU",
    "HyenaRec",
    "HyenaRecChebyshev",
    "HyenaRecFourier",
    "HyenaRecWoGLU",
    "HyenaRecWoPK",
    "HyenaVanilla",
    "HyTRec",
    "LRURec",
    "Mamba4Rec",
    "NARM",
    "SASRec",
]
