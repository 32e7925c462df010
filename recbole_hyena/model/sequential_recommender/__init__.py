from recbole_hyena.model.sequential_recommender.hyenarec import HyenaRec

__all__ = ["HyenaRec"]
