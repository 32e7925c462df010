"""Tune a plugin or RecBole model: ``python run_hyper_hyena.py --model=HyenaRec --dataset=ml-1m``.

RecBole's ``run_hyper.py`` for the plugin: ``--params_file`` (default: the paper's weight decay x
dropout grid), ``--tool=Hyperopt`` (RecBole's HyperTuning, exhaustive grid) or ``--tool=Ray``; any
other ``--key=value`` is a RecBole config override shared by all trials.
"""

from recbole_hyena.tuning import main

if __name__ == "__main__":
    main()
