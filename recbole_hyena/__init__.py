"""recbole-hyena: HyenaRec and friends as a RecBole plugin."""

__version__ = "0.1.0"
