"""
recbole_hyena.tuning
####################

Hyper-parameter search the RecBole way, for plugin and RecBole models alike.

- ``hyperopt_tune``: RecBole's ``HyperTuning`` (hyperopt): ``exhaustive`` grid search over
  ``choice`` parameters (every point is run), or ``random`` / ``bayes`` with ``max_evals``.
- ``ray_tune``: the same space as Ray Tune trials (each ``choice`` becomes a grid), in parallel on
  one machine or on a Ray cluster.

Both run ``recbole_hyena.quick_start.objective_function`` per trial, read RecBole's ``.hyper``
files (one ``name type values`` line per parameter, types ``choice``, ``uniform``, ``quniform``,
``loguniform``; the paper's grid ships as ``properties/hyper/paper_grid.hyper``), keep going when a
trial fails (it is logged with its parameters and error and listed in the outputs), and write,
beside ``output_file`` (RecBole's text export):

- ``<stem>.csv``: one row per trial: parameters, status, valid and test metrics, error;
- ``<stem>.json``: the same trials, the best parameters and their valid and test results;
- ``<stem>.png``: a heatmap of the validation metric over two searched parameters.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import os
import sys
from functools import partial
from logging import getLogger
from pathlib import Path

from recbole.trainer import HyperTuning as RecBoleHyperTuning
from recbole.trainer.hyper_tuning import exhaustive_search

from recbole_hyena.config import Config
from recbole_hyena.quick_start import objective_function
from recbole_hyena.utils import properties_dir

PARAM_TYPES = ("choice", "uniform", "quniform", "loguniform")
# the numbers each numeric type takes, in order
_BOUNDS = {
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
}


def hyper_file(name: str = "paper_grid") -> Path:
    """A parameters file shipped with the plugin (``properties/hyper/<name>.hyper``)."""
    folder = properties_dir() / "hyper"
    path = folder / f"{name}.hyper"
    if not path.is_file():
        shipped = sorted(file.stem for file in folder.glob("*.hyper"))
        raise FileNotFoundError(f"no parameters file {path}; shipped: {shipped}")
    return path


def read_params_file(path: str | os.PathLike) -> dict[str, tuple[str, list]]:
    """``{name: (type, values)}`` from a RecBole ``.hyper`` file, in file order.

    ``choice`` values are a Python list literal; ``uniform`` and ``loguniform`` take ``low,high``
    (``loguniform`` bounds are natural logs, as in hyperopt), ``quniform`` ``low,high,q``."""
    space = {}
    with open(path) as file:
        for number, line in enumerate(file, start=1):
            words = line.strip().split(" ")
            if len(words) < 3 or words[0].startswith("#"):
                continue
            name, param_type, text = words[0], words[1], "".join(words[2:])
            try:
                if param_type == "choice":
                    values = ast.literal_eval(text)
                    if not isinstance(values, (list, tuple)) or not values:
                        raise ValueError("choice takes a non-empty list, e.g. [0.1,0.2]")
                    values = list(values)
                elif param_type in PARAM_TYPES:
                    values = [float(value) for value in text.split(",")]
                    expected = _BOUNDS[param_type]
                    if len(values) != len(expected):
                        raise ValueError(f"{param_type} takes {','.join(expected)}")
                else:
                    raise ValueError(f"type [{param_type}] is not one of {list(PARAM_TYPES)}")
            except (ValueError, SyntaxError) as error:
                raise ValueError(f"{path}, line {number} ({line.strip()}): {error}") from error
            space[name] = (param_type, values)
    if not space:
        raise ValueError(f"{path} defines no parameter")
    return space


def _params_dict(space: dict[str, tuple[str, list]]) -> dict:
    # RecBole HyperTuning's params_dict form: {type: {name: values}}.
    params_dict = {}
    for name, (param_type, values) in space.items():
        params_dict.setdefault(param_type, {})[name] = values
    return params_dict


class HyperTuning(RecBoleHyperTuning):
    """RecBole's ``HyperTuning`` that survives failing trials and records every trial.

    ``records`` holds one dict per trial (see ``trial``). ``early_stop=None`` (the default) runs
    every trial; RecBole's default stops a grid after 10 trials without improvement."""

    def __init__(
        self,
        objective_function,
        space=None,
        params_file=None,
        params_dict=None,
        algo="exhaustive",
        max_evals: int = 100,
        early_stop: int | None = None,
        **kwargs,
    ):
        if algo == "exhaustive" and space is None:
            # RecBole sizes the grid from hyperopt's graph, which fails for list-valued choices
            # (dropout_probs choice [[0.25,0.5],[0.0,0.0]]); size it from the parameters instead.
            if params_dict is None:
                params_dict, params_file = _params_dict(read_params_file(params_file)), None
            max_evals = math.prod(len(values) for values in params_dict.get("choice", {}).values())
            algo = partial(exhaustive_search, nbMaxSucessiveFailures=1000)
        super().__init__(
            objective_function,
            space=space,
            params_file=params_file,
            params_dict=params_dict,
            algo=algo,
            max_evals=max_evals,
            early_stop=early_stop or 1,
            **kwargs,
        )
        if early_stop is None:
            self.early_stop_fn = None
        else:
            self.early_stop_fn = _skip_failed_trials(self.early_stop_fn)
        self.records: list[dict] = []

    def trial(self, params):
        """Overrides RecBole's ``trial``: a trial that raises is recorded as failed instead of
        ending the search (hyperopt would re-raise it and lose the other trials)."""
        import hyperopt

        params = dict(params)
        params_str = self.params2str(params)
        number = len(self.records) + 1
        print("running parameters:", params)
        try:
            result = self.objective_function(dict(params), self.fixed_config_file_list)
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            getLogger().exception(f"trial {number} failed, parameters {params_str}: {message}")
            self.records.append(_record(number, params, error=message))
            return {"status": hyperopt.STATUS_FAIL, "error": message}

        self.records.append(_record(number, params, result=result))
        self.params_list.append(params_str)
        self.params2result[params_str] = result
        self.model = result["model"]
        score, bigger = result["best_valid_score"], result["valid_score_bigger"]
        self.score_list.append(score)
        if self.best_score is None or (
            score > self.best_score if bigger else score < self.best_score
        ):
            self.best_score, self.best_params = score, params
            self._print_result(result)
        return {"loss": -score if bigger else score, "status": hyperopt.STATUS_OK}

    def run(self):
        """RecBole's ``run``, which also returns when every trial failed (hyperopt's ``fmin``
        would raise ``AllTrialsFailed`` looking for the best one)."""
        from hyperopt import fmin
        from hyperopt.exceptions import AllTrialsFailed

        try:
            fmin(
                self.trial,
                self.space,
                algo=self.algo,
                max_evals=self.max_evals,
                early_stop_fn=self.early_stop_fn,
            )
        except AllTrialsFailed:
            pass  # self.records holds every trial and its error
        if self.display_file is not None:
            self.plot_hyper()

    def export_result(self, output_file=None):
        """RecBole's text export, then the failed trials with their errors."""
        super().export_result(output_file=output_file)
        with open(output_file, "a") as file:
            for record in self.records:
                if record["status"] == "failed":
                    file.write(
                        f"{self.params2str(record['params'])}\nFailed: {record['error']}\n\n"
                    )


def _skip_failed_trials(early_stop_fn):
    # hyperopt's no_progress_loss reads the last trial's loss, which a failed trial lacks.
    def stop_fn(trials, *state):
        if trials.trials[-1]["result"].get("status") != "ok":
            return False, list(state)
        return early_stop_fn(trials, *state)

    return stop_fn


def _record(
    number: int, params: dict, result: dict | None = None, error: str | None = None
) -> dict:
    """One trial as plain data: ``trial``, ``status`` (``ok``/``failed``), ``params``,
    ``best_valid_score``, ``valid_result``, ``test_result`` and ``error``."""
    result = result or {}
    return {
        "trial": number,
        "status": "failed" if error else "ok",
        "params": {name: _plain(value) for name, value in params.items()},
        "best_valid_score": _plain(result.get("best_valid_score")),
        "valid_result": {k: _plain(v) for k, v in (result.get("best_valid_result") or {}).items()},
        "test_result": {k: _plain(v) for k, v in (result.get("test_result") or {}).items()},
        "error": error,
    }


def _plain(value):
    if hasattr(value, "item"):  # numpy and torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf/nan; a trial without validation has score -inf
    return value


def _fixed_objective(fixed: dict, params: dict, config_file_list=None) -> dict:
    # HyperTuning passes only the searched parameters; the model, the data set and the caller's
    # settings are added here (searched values win).
    return objective_function({**fixed, **params}, config_file_list)


def hyperopt_tune(
    model: str,
    dataset: str,
    params_file: str | os.PathLike | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    output_file: str | os.PathLike | None = None,
    algo: str = "exhaustive",
    max_evals: int = 100,
    early_stop: int | None = None,
    heatmap: tuple[str, str] | None = None,
) -> dict:
    """Search ``params_file`` (default: the paper's grid) with RecBole's ``HyperTuning``.

    ``config_dict`` and ``config_file_list`` hold the settings shared by all trials. Writes
    ``output_file`` (default ``hyper_<model>_<dataset>.result``) and the CSV, JSON and heatmap
    beside it; returns the JSON's content (see ``export_results``). ``heatmap`` names the
    parameters on its x and y axes (default: the first two that vary)."""
    space = read_params_file(params_file or hyper_file())
    config = Config(
        model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
    )
    fixed = {**(config_dict or {}), "model": model, "dataset": dataset}
    tuner = HyperTuning(
        partial(_fixed_objective, fixed),
        params_dict=_params_dict(space),
        fixed_config_file_list=config_file_list,
        algo=algo,
        max_evals=max_evals,
        early_stop=early_stop,
    )
    tuner.run()
    output_file = str(output_file or f"hyper_{model}_{dataset}.result")
    tuner.export_result(output_file=output_file)
    return export_results(tuner.records, output_file, config, space, heatmap=heatmap)


def ray_tune(
    model: str,
    dataset: str,
    params_file: str | os.PathLike | None = None,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    output_file: str | os.PathLike | None = None,
    num_samples: int = 1,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    address: str | None = None,
    storage_path: str | os.PathLike | None = None,
    heatmap: tuple[str, str] | None = None,
) -> dict:
    """Search ``params_file`` (default: the paper's grid) as Ray Tune trials.

    Each ``choice`` parameter becomes a ``tune.grid_search`` (every point runs, ``num_samples``
    times); the others are sampled ``num_samples`` times. Trials run in parallel as far as
    ``cpus_per_trial``/``gpus_per_trial`` allow, on the local machine or on the cluster at
    ``address`` (``"auto"`` inside a ``ray start`` cluster). Writes and returns what
    ``hyperopt_tune`` does (``output_file`` in RecBole's text form, from Ray's results)."""
    import ray
    from ray import tune

    space = read_params_file(params_file or hyper_file())
    config = Config(
        model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
    )
    # Ray runs each trial in its own folder (its log/ and saved/ land there): paths must be
    # absolute. The driver's --key=value overrides are not on the workers' command line.
    fixed = {
        **(config_dict or {}),
        **config.cmd_config_dict,
        "model": model,
        "dataset": dataset,
        "data_path": os.path.dirname(os.path.abspath(config["data_path"])),
    }
    config_file_list = [os.path.abspath(file) for file in config_file_list or []] or None
    param_space = {}
    for name, (param_type, values) in space.items():
        if param_type == "choice":
            param_space[name] = tune.grid_search(values)
        elif param_type == "uniform":
            param_space[name] = tune.uniform(*values)
        elif param_type == "quniform":
            param_space[name] = tune.quniform(*values)
        else:  # bounds are logs, as in hyperopt
            param_space[name] = tune.loguniform(math.exp(values[0]), math.exp(values[1]))

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    valid_metric = "valid_" + config["valid_metric"].lower()
    analysis = tune.run(
        tune.with_parameters(
            _ray_trial, fixed=fixed, config_file_list=config_file_list, gpus=gpus_per_trial
        ),
        config=param_space,
        num_samples=num_samples,
        resources_per_trial={"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        storage_path=os.path.abspath(storage_path or "ray_results"),
        name=f"hyper_{model}_{dataset}",
        metric=valid_metric,
        mode="max" if config["valid_metric_bigger"] else "min",
        raise_on_failed_trial=False,  # a failed trial is reported, the others are kept
        verbose=1,
    )
    records = [_ray_record(number, trial) for number, trial in enumerate(analysis.trials, 1)]
    for record in records:
        if record["status"] == "failed":
            getLogger().error(
                f"trial {record['trial']} failed, parameters {record['params']}: {record['error']}"
            )
    output_file = str(output_file or f"hyper_{model}_{dataset}.result")
    _export_text(records, output_file)
    return export_results(records, output_file, config, space, heatmap=heatmap)


def _ray_trial(params: dict, fixed: dict, config_file_list: list[str] | None, gpus: float) -> None:
    config_dict = {**fixed, **params}
    # Ray hands each trial its GPUs through CUDA_VISIBLE_DEVICES, which RecBole's Config would
    # overwrite with gpu_id ('0'): keep Ray's choice, or no GPU at all.
    config_dict["gpu_id"] = os.environ.get("CUDA_VISIBLE_DEVICES", "") if gpus else ""
    # RecBole's Config also reads --key=value from sys.argv: here the Ray worker's own flags.
    sys.argv = sys.argv[:1]
    objective_function(config_dict, config_file_list)


def _ray_record(number: int, trial) -> dict:
    params = dict(trial.config)
    metrics = trial.last_result or {}
    error = _ray_error(trial)
    if trial.status != "TERMINATED" or error is not None or "best_valid_score" not in metrics:
        return _record(number, params, error=error or f"trial ended {trial.status} without results")
    result = {
        "best_valid_score": metrics.get("best_valid_score"),
        "best_valid_result": _prefixed(metrics, "valid_"),
        "test_result": _prefixed(metrics, "test_"),
    }
    return _record(number, params, result=result)


def _prefixed(metrics: dict, prefix: str) -> dict:
    return {key[len(prefix) :]: value for key, value in metrics.items() if key.startswith(prefix)}


def _ray_error(trial) -> str | None:
    if not trial.error_file or not os.path.isfile(trial.error_file):
        return None
    lines = [
        line.strip() for line in Path(trial.error_file).read_text().splitlines() if line.strip()
    ]
    return lines[-1] if lines else None


def _export_text(records: list[dict], output_file: str) -> None:
    # RecBole's HyperTuning.export_result layout, for the Ray path.
    with open(output_file, "w") as file:
        for record in records:
            file.write(RecBoleHyperTuning.params2str(record["params"]) + "\n")
            if record["status"] == "failed":
                file.write(f"Failed: {record['error']}\n\n")
                continue
            for title, values in (
                ("Valid", record["valid_result"]),
                ("Test", record["test_result"]),
            ):
                text = "    ".join(f"{name} : {value}" for name, value in values.items())
                file.write(f"{title} result:\n{text}\n")
            file.write("\n")


def export_results(
    records: list[dict],
    output_file: str | os.PathLike,
    config,
    space: dict[str, tuple[str, list]],
    heatmap: tuple[str, str] | None = None,
) -> dict:
    """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>.png`` beside ``output_file`` and return
    the JSON's content: ``model``, ``dataset``, ``valid_metric``, ``valid_metric_bigger``,
    ``best_params``, ``best_valid_score``, ``best_valid_result``, ``best_test_result``,
    ``n_trials``, ``n_failed``, ``trials`` (the records) and ``files``."""
    stem = os.path.splitext(str(output_file))[0]
    valid_metric = config["valid_metric"].lower()
    bigger = config["valid_metric_bigger"]
    finished = [record for record in records if record["status"] == "ok"]
    best = None
    if finished:
        pick = max if bigger else min
        best = pick(finished, key=lambda record: _score(record, valid_metric, bigger))
    summary = {
        "model": config["model"],
        "dataset": config["dataset"],
        "valid_metric": valid_metric,
        "valid_metric_bigger": bigger,
        "best_params": best["params"] if best else None,
        "best_valid_score": best["best_valid_score"] if best else None,
        "best_valid_result": best["valid_result"] if best else None,
        "best_test_result": best["test_result"] if best else None,
        "n_trials": len(records),
        "n_failed": len(records) - len(finished),
        "trials": records,
        "files": {"result": str(output_file), "csv": stem + ".csv", "json": stem + ".json"},
    }
    _write_csv(records, list(space), stem + ".csv")
    x, y = heatmap or _heatmap_axes(records, list(space))
    if x is not None:
        title = f"{config['model']} on {config['dataset']}: valid {valid_metric}"
        plot_heatmap(records, x, y, valid_metric, stem + ".png", bigger=bigger, title=title)
        summary["files"]["heatmap"] = stem + ".png"
    with open(stem + ".json", "w") as file:
        json.dump(summary, file, indent=2)
    logger = getLogger()
    logger.info(f"best params: {summary['best_params']}")
    logger.info(f"best valid: {summary['best_valid_result']}, test: {summary['best_test_result']}")
    logger.info(f"{len(records)} trials ({summary['n_failed']} failed) in {summary['files']}")
    return summary


def _score(record: dict, valid_metric: str, bigger: bool) -> float:
    value = record["valid_result"].get(valid_metric, record["best_valid_score"])
    if value is None:
        return -math.inf if bigger else math.inf
    return value


def _write_csv(records: list[dict], param_names: list[str], path: str) -> None:
    metric_names = []
    for record in records:
        for prefix, values in (
            ("valid_", record["valid_result"]),
            ("test_", record["test_result"]),
        ):
            metric_names += [prefix + name for name in values if prefix + name not in metric_names]
    header = ["trial", "status", *param_names, "best_valid_score", *metric_names, "error"]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=header)
        writer.writeheader()
        for record in records:
            row = {"trial": record["trial"], "status": record["status"], "error": record["error"]}
            row.update(record["params"])
            row["best_valid_score"] = record["best_valid_score"]
            for prefix in ("valid", "test"):
                row.update({f"{prefix}_{k}": v for k, v in record[f"{prefix}_result"].items()})
            writer.writerow(row)


def _heatmap_axes(records: list[dict], param_names: list[str]) -> tuple[str | None, str | None]:
    varying = [
        name
        for name in param_names
        if len({repr(record["params"].get(name)) for record in records}) > 1
    ]
    if not varying:
        return None, None
    return varying[0], (varying[1] if len(varying) > 1 else None)


def plot_heatmap(
    records: list[dict],
    x: str,
    y: str | None,
    metric: str,
    path: str | os.PathLike,
    bigger: bool = True,
    title: str | None = None,
) -> str:
    """A heatmap PNG of ``metric`` (a key of each record's ``valid_result``) over parameters ``x``
    and ``y`` (``None``: one row). A cell holds the best trial at that point (over any other
    searched parameter); a cell whose trials all failed is grey and marked ``failed``, one that was
    not run is blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x_values = _sorted_values(records, x)
    y_values = _sorted_values(records, y) if y else [None]
    values = np.full((len(y_values), len(x_values)), np.nan)
    failed = np.zeros_like(values, dtype=bool)
    for record in records:
        row = y_values.index(record["params"].get(y)) if y else 0
        column = x_values.index(record["params"].get(x))
        score = record["valid_result"].get(metric)
        if record["status"] != "ok" or score is None:
            failed[row, column] = np.isnan(values[row, column])
            continue
        failed[row, column] = False
        current = values[row, column]
        if np.isnan(current) or (score > current if bigger else score < current):
            values[row, column] = score

    figure, axes = plt.subplots(figsize=(1.2 * len(x_values) + 2.5, 0.8 * len(y_values) + 2))
    axes.imshow(
        failed, cmap=matplotlib.colors.ListedColormap(["white", "lightgrey"]), vmin=0, vmax=1
    )
    image = axes.imshow(np.ma.masked_invalid(values), cmap="viridis")
    figure.colorbar(image, ax=axes, label=f"valid {metric}")
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for row in range(len(y_values)):
        for column in range(len(x_values)):
            if failed[row, column]:
                axes.text(column, row, "failed", ha="center", va="center", fontsize=8)
            elif np.isfinite(values[row, column]):
                value = values[row, column]
                color = "black" if value > middle else "white"
                axes.text(
                    column, row, f"{value:.4f}", ha="center", va="center", fontsize=8, color=color
                )
    axes.set_xticks(
        range(len(x_values)),
        [f"{value:g}" if isinstance(value, float) else str(value) for value in x_values],
    )
    axes.set_xlabel(x)
    if y:
        axes.set_yticks(
            range(len(y_values)),
            [f"{value:g}" if isinstance(value, float) else str(value) for value in y_values],
        )
        axes.set_ylabel(y)
    else:
        axes.set_yticks([])
    axes.set_title(title or f"valid {metric}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(path)


def _sorted_values(records: list[dict], name: str) -> list:
    values = []
    for record in records:
        value = record["params"].get(name)
        if value not in values:
            values.append(value)
    try:
        return sorted(values)
    except TypeError:  # mixed types (e.g. None and numbers): keep the trials' order
        return values


def main() -> None:
    """``python run_hyper_hyena.py --model=HyenaRec --dataset=ml-1m`` (RecBole's ``run_hyper``)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", "-m", type=str, default="HyenaRec", help="model name")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="fixed config files")
    parser.add_argument(
        "--params_file", type=str, default=None, help="parameters file (default: the paper's grid)"
    )
    parser.add_argument("--output_file", type=str, default=None, help="RecBole's .result file")
    parser.add_argument("--tool", type=str, default="Hyperopt", help="Hyperopt or Ray")
    parser.add_argument("--algo", type=str, default="exhaustive", help="exhaustive, random, bayes")
    parser.add_argument("--max_evals", type=int, default=100, help="trials (random/bayes)")
    parser.add_argument("--early_stop", type=int, default=None, help="trials without progress")
    parser.add_argument("--num_samples", type=int, default=1, help="Ray: samples per grid point")
    parser.add_argument("--cpus_per_trial", type=float, default=1, help="Ray: CPUs per trial")
    parser.add_argument("--gpus_per_trial", type=float, default=0, help="Ray: GPUs per trial")
    parser.add_argument("--ray_address", type=str, default=None, help="Ray: cluster (auto)")
    # The remaining --key=value pairs are read by RecBole's Config from sys.argv.
    args, _ = parser.parse_known_args()
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    common = dict(
        params_file=args.params_file,
        config_file_list=config_file_list,
        output_file=args.output_file,
    )
    if args.tool.lower() == "hyperopt":
        summary = hyperopt_tune(
            args.model,
            args.dataset,
            algo=args.algo,
            max_evals=args.max_evals,
            early_stop=args.early_stop,
            **common,
        )
    elif args.tool.lower() == "ray":
        summary = ray_tune(
            args.model,
            args.dataset,
            num_samples=args.num_samples,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            address=args.ray_address,
            **common,
        )
    else:
        raise ValueError(f"--tool [{args.tool}] must be Hyperopt or Ray")
    print("best params:", summary["best_params"])
    print("best valid result:", summary["best_valid_result"])
    print("best test result:", summary["best_test_result"])
    print(
        f"trials: {summary['n_trials']} ({summary['n_failed']} failed); files: {summary['files']}"
    )


__all__ = [
    "HyperTuning",
    "export_results",
    "hyper_file",
    "hyperopt_tune",
    "plot_heatmap",
    "ray_tune",
    "read_params_file",
]
