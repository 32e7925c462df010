"""
recbole_hyena.config
####################

``Config``: RecBole's configurator, which also finds plugin models and the plugin's YAML files.
Priority, low to high: RecBole's own files, the plugin's ``overall.yaml``, ``model/<Model>.yaml``
and ``dataset/<dataset>.yaml``, then the user's config files, dict and command line.
"""

from __future__ import annotations

from recbole.config import Config as RecBoleConfig

from recbole_hyena.distributed import DistributedDeviceMixin
from recbole_hyena.utils import get_model, properties_dir


class Config(DistributedDeviceMixin, RecBoleConfig):
    def _get_model_and_dataset(self, model, dataset):
        # RecBole resolves a model name with its own get_model; hand it the class instead.
        if model is None:
            model = self.external_config_dict.get("model")
        if isinstance(model, str):
            model = get_model(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        folder = properties_dir()
        for file in (
            folder / "overall.yaml",
            folder / "model" / f"{model}.yaml",
            folder / "dataset" / f"{dataset}.yaml",
        ):
            if not file.is_file():
                continue
            config_dict = self._update_internal_config_dict(str(file)) or {}
            if file.parent.name == "dataset":
                self.parameters["Dataset"] += [
                    key for key in config_dict if key not in self.parameters["Dataset"]
                ]
