from recbole_hyena.data.utils import create_dataset, data_preparation

__all__ = ["create_dataset", "data_preparation"]
