"""Train and evaluate a plugin or RecBole model: ``python run_recbole_hyena.py --model=HyenaRec``.

Any other ``--key=value`` is a RecBole config override, as with RecBole's own ``run_recbole.py``.
"""

from recbole_hyena.cli import main

if __name__ == "__main__":
    main()
