"""The command line: ``python run_recbole_hyena.py --model=HyenaRec --dataset=ml-100k``.

Any other ``--key=value`` is a RecBole config override, as with RecBole's own ``run_recbole.py``.
"""

import argparse

from recbole_hyena.quick_start import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", "-m", type=str, default="HyenaRec", help="model name")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated yaml files")
    parser.add_argument("--nproc", type=int, default=1, help="processes (DDP) on this machine")
    parser.add_argument("--ip", type=str, default="localhost", help="master node address")
    parser.add_argument("--port", type=str, default="5678", help="master node port")
    parser.add_argument("--world_size", type=int, default=-1, help="processes in all nodes")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset")
    # The remaining --key=value pairs are read by RecBole's Config from sys.argv.
    args, _ = parser.parse_known_args()

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    result = run(
        args.model,
        args.dataset,
        config_file_list=config_file_list,
        nproc=args.nproc,
        world_size=args.world_size,
        ip=args.ip,
        port=args.port,
        group_offset=args.group_offset,
    )
    if result is not None:
        print(f"best valid: {dict(result['best_valid_result'])}")
        print(f"test result: {dict(result['test_result'])}")


if __name__ == "__main__":
    main()
