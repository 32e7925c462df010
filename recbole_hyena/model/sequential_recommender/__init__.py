from recbole_hyena.model.sequential_recommender.flashsasrec import FlashSASRec
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
from recbole_hyena.model.sequential_recommender.zoo_adapters import GRU4Rec, SASRec

__all__ = [
    "AtrousHyena",
    "FlashSASRec",
    "GRU4Rec",
    "HyenaRec",
    "HyenaRecChebyshev",
    "HyenaRecFourier",
    "HyenaRecWoGLU",
    "HyenaRecWoPK",
    "HyenaVanilla",
    "HyTRec",
    "SASRec",
]
