"""
recbole_hyena.kernels
#####################

Inspect the long kernels of a checkpoint saved by the plugin's trainer (any model built from
``HyenaOperator``: HyenaRec and its ablations).

``energy``: the paper's basis-size criterion. For the coefficients ``c_k`` (``k < P_ref``) of a
basis filter, ``E(P) = sum_{k<P} ||c_k||^2 / sum_{k<P_ref} ||c_k||^2``, per layer and per Hyena
stage, with the checkpoint's own ``filter_order`` as the reference ``P_ref``; the smallest ``P``
with ``E(P) >= threshold`` is the basis size that criterion picks.

``plot``: the paper's Figure 2: the first basis functions, the learned kernels of a few channels
per layer and stage, and implicit-filter kernels beside them (those of a second checkpoint, or a
freshly initialised implicit filter of the same shape).

Usage::

    python -m recbole_hyena.kernels energy --checkpoint saved/HyenaRec-....pth --threshold 0.99
    python -m recbole_hyena.kernels plot --checkpoint saved/HyenaRec-....pth --out kernels.png
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

import torch

from recbole_hyena.model.filters import (
    BasisKernelGenerator,
    ImplicitKernelGenerator,
    KernelGenerator,
    build_kernel_generator,
)
from recbole_hyena.trainer import load_checkpoint

# The long filter of a HyenaOperator appears in a state dict as "<operator>.long_filter.<param>".
_FILTER_KEY = re.compile(r"^(?P<prefix>.*)\.long_filter\.(?P<param>.+)$")


@dataclass
class LongFilter:
    """One operator's kernel generator, rebuilt from a checkpoint with its weights loaded."""

    name: str  # the operator's path in the model, e.g. "blocks.0.mixer"
    generator: KernelGenerator
    order: int  # Hyena stages; channel ``stage * d_model + d`` belongs to stage ``stage``
    d_model: int
    filter_length: int  # the length the model builds its kernels at (MAX_ITEM_LIST_LENGTH)

    def kernels(self) -> torch.Tensor:
        """``[order, d_model, filter_length]``, as the operator uses them."""
        with torch.no_grad():
            kernels = self.generator(self.filter_length)
        return kernels.view(self.order, self.d_model, self.filter_length)

    def stage_coefficients(self) -> torch.Tensor:
        """Basis coefficients ``[order, P_ref, d_model]`` (basis filters only)."""
        if not isinstance(self.generator, BasisKernelGenerator):
            raise ValueError(
                f"{self.name} has a [{type(self.generator).__name__}]: the energy criterion needs "
                "basis coefficients (filter_type legendre, chebyshev or fourier)"
            )
        coefficients = self.generator.coefficients.detach()  # [P_ref, order * d_model]
        return coefficients.view(-1, self.order, self.d_model).transpose(0, 1)


def load_filters(checkpoint: dict) -> list[LongFilter]:
    """Rebuild every long filter of a loaded checkpoint from its config and state dict."""
    config = checkpoint["config"]
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in checkpoint["state_dict"].items():
        match = _FILTER_KEY.match(key)
        if match:
            groups.setdefault(match["prefix"], {})[match["param"]] = value
    if not groups:
        raise ValueError(
            f"the checkpoint of model [{config.get('model')}] holds no Hyena long filter "
            "(no '*.long_filter.*' weights in its state dict)"
        )
    order, d_model = config["hyena_order"], config["hidden_size"]
    filters = []
    for name, state in groups.items():
        generator = build_kernel_generator(config["filter_type"], order * d_model, config)
        generator.load_state_dict(state)
        filters.append(
            LongFilter(name, generator.eval(), order, d_model, config["MAX_ITEM_LIST_LENGTH"])
        )
    return filters


def cumulative_energy(coefficients: torch.Tensor) -> torch.Tensor:
    r"""``E(P)`` for ``P = 1..P_ref`` (entry ``P - 1``) of coefficients ``[P_ref, channels]``."""
    row_energy = coefficients.detach().double().pow(2).sum(dim=-1)
    total = row_energy.sum()
    if total <= 0:
        raise ValueError("all coefficients are zero: E(P) is undefined")
    return row_energy.cumsum(0) / total


def smallest_basis_size(energy: torch.Tensor, threshold: float) -> int:
    """The smallest ``P`` with ``E(P) >= threshold``."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    # E(P_ref) is 1 up to rounding; the tolerance keeps threshold 1.0 reachable.
    passing = (energy >= threshold - 1e-12).nonzero()
    return int(passing[0, 0]) + 1


def energy_rows(filters: list[LongFilter], threshold: float) -> list[dict]:
    """One row per layer and stage: ``layer``, ``stage``, ``operator``, ``P_ref``, ``P`` (the
    smallest passing size) and ``energy`` (``E(1..P_ref)``)."""
    rows = []
    for layer, long_filter in enumerate(filters):
        for stage, coefficients in enumerate(long_filter.stage_coefficients()):
            energy = cumulative_energy(coefficients)
            rows.append(
                {
                    "layer": layer,
                    "stage": stage,
                    "operator": long_filter.name,
                    "P_ref": len(energy),
                    "P": smallest_basis_size(energy, threshold),
                    "energy": energy,
                }
            )
    return rows


def probe_sizes(reference: int) -> list[int]:
    """Powers of two below ``reference``, then ``reference``: the columns of the energy table."""
    sizes = [1 << k for k in range(reference.bit_length()) if 1 << k < reference]
    return sizes + [reference]


def format_energy_table(rows: list[dict], threshold: float) -> str:
    """A markdown table of ``E(P)`` at ``probe_sizes`` and the smallest passing ``P``."""
    sizes = probe_sizes(rows[0]["P_ref"])
    header = ["layer", "stage", *(f"E({size})" for size in sizes), f"P at E >= {threshold:g}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["layer"]), str(row["stage"])]
        cells += [f"{row['energy'][size - 1]:.4f}" for size in sizes]
        cells.append(str(row["P"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def energy_command(args: argparse.Namespace) -> None:
    checkpoint = load_checkpoint(args.checkpoint, map_location="cpu")
    config = checkpoint["config"]
    rows = energy_rows(load_filters(checkpoint), args.threshold)
    print(
        f"model {config['model']}, filter_type {config['filter_type']}, reference order "
        f"P_ref = {rows[0]['P_ref']}, {len(rows)} layer/stage kernels, threshold {args.threshold:g}"
    )
    print(format_energy_table(rows, args.threshold))
    print(f"smallest P passing in every layer and stage: {max(row['P'] for row in rows)}")


def _comparison_filters(filters: list[LongFilter], path: str | None, seed: int) -> tuple:
    """Implicit-filter kernels to draw beside the checkpoint's, and their caption."""
    if path is not None:
        checkpoint = load_checkpoint(path, map_location="cpu")
        other = load_filters(checkpoint)
        if len(other) != len(filters) or other[0].order != filters[0].order:
            raise ValueError(
                f"{path} has {len(other)} operators of order {other[0].order}, the checkpoint to "
                f"plot {len(filters)} of order {filters[0].order}: they cannot share one figure"
            )
        config = checkpoint["config"]
        return other, f"{config['model']} ({config['filter_type']} filter)"
    if isinstance(filters[0].generator, ImplicitKernelGenerator):
        return None, ""
    torch.manual_seed(seed)
    fresh = [
        LongFilter(
            f.name,
            ImplicitKernelGenerator(f.order * f.d_model).eval(),
            f.order,
            f.d_model,
            f.filter_length,
        )
        for f in filters
    ]
    return fresh, "implicit filter at initialisation"


def plot_kernels(
    checkpoint: dict,
    out: str,
    n_channels: int = 4,
    n_basis: int = 6,
    implicit_checkpoint: str | None = None,
    seed: int = 0,
) -> None:
    """Write the kernel figure of ``checkpoint`` to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = checkpoint["config"]
    filters = load_filters(checkpoint)
    comparison, comparison_caption = _comparison_filters(filters, implicit_checkpoint, seed)
    order, length = filters[0].order, filters[0].filter_length
    n_columns = max(2, order * (2 if comparison else 1))
    figure, axes = plt.subplots(
        1 + len(filters),
        n_columns,
        figsize=(3.4 * n_columns, 2.5 * (1 + len(filters))),
        squeeze=False,
    )
    lags = torch.arange(length)

    # Top row: the basis the kernels are drawn from, and how fast their coefficients' energy adds up.
    basis_generator = filters[0].generator
    if not isinstance(basis_generator, BasisKernelGenerator):
        basis_generator = build_kernel_generator(
            "legendre", 1, {**config, "filter_type": "legendre"}
        )
    shown = min(n_basis, basis_generator.n_basis)
    basis_axis = axes[0, 0]
    for k, column in enumerate(basis_generator.build_basis(length, torch.device("cpu")).T[:shown]):
        basis_axis.plot(lags, column, label=f"k={k}")
    basis_axis.set_title(
        f"first {shown} {type(basis_generator).__name__[: -len('KernelGenerator')]} basis functions",
        fontsize=9,
    )
    basis_axis.legend(fontsize=6, ncol=2)
    energy_axis = axes[0, 1]
    if isinstance(filters[0].generator, BasisKernelGenerator):
        for row in energy_rows(filters, 0.99):
            energy_axis.plot(
                torch.arange(1, row["P_ref"] + 1),
                row["energy"],
                label=f"layer {row['layer']} stage {row['stage']}",
            )
        energy_axis.axhline(0.99, color="grey", linestyle=":", linewidth=1)
        energy_axis.set_xscale("log", base=2)
        energy_axis.set_title("cumulative energy E(P)", fontsize=9)
        energy_axis.set_xlabel("P", fontsize=8)
        energy_axis.legend(fontsize=6)
    else:
        energy_axis.set_axis_off()
    for axis in axes[0, 2:]:
        axis.set_axis_off()

    # One row per layer: the checkpoint's kernels per stage, then the implicit filter's.
    panels = [(filters, config["model"])]
    if comparison:
        panels.append((comparison, comparison_caption))
    for layer in range(len(filters)):
        for panel, (panel_filters, caption) in enumerate(panels):
            kernels = panel_filters[layer].kernels()
            for stage in range(order):
                axis = axes[1 + layer, panel * order + stage]
                for channel in range(min(n_channels, kernels.shape[1])):
                    axis.plot(kernels[stage, channel], linewidth=1, label=f"ch {channel}")
                axis.set_title(f"{caption}\nlayer {layer}, stage {stage}", fontsize=8)
                axis.set_xlabel("lag", fontsize=8)
        axes[1 + layer, 0].legend(fontsize=6)
    for axis in axes.flat:
        axis.tick_params(labelsize=7)
    figure.suptitle(
        f"{config['model']} ({config['filter_type']} filter) on {config['dataset']}, "
        f"L = {length}, unit-norm kernels",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def plot_command(args: argparse.Namespace) -> None:
    checkpoint = load_checkpoint(args.checkpoint, map_location="cpu")
    plot_kernels(
        checkpoint, args.out, args.channels, args.n_basis, args.implicit_checkpoint, args.seed
    )
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_hyena.kernels", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    energy = commands.add_parser("energy", help="cumulative energy E(P) of the basis coefficients")
    energy.add_argument("--checkpoint", required=True, help="a .pth saved by the plugin's trainer")
    energy.add_argument("--threshold", type=float, default=0.99, help="E(P) to reach (0, 1]")
    energy.set_defaults(run=energy_command)
    plot = commands.add_parser("plot", help="basis functions and learned kernels as a PNG")
    plot.add_argument("--checkpoint", required=True, help="a .pth saved by the plugin's trainer")
    plot.add_argument("--out", required=True, help="the PNG to write")
    plot.add_argument("--channels", type=int, default=4, help="channels drawn per layer and stage")
    plot.add_argument("--n-basis", type=int, default=6, help="basis functions drawn")
    plot.add_argument(
        "--implicit-checkpoint",
        default=None,
        help="a checkpoint with implicit filters (e.g. HyenaVanilla) to draw beside; default: a "
        "freshly initialised implicit filter",
    )
    plot.add_argument("--seed", type=int, default=0, help="seed of the fresh implicit filter")
    plot.set_defaults(run=plot_command)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
