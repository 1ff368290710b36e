"""MMIE's shipped experiment configs: ``--config=configs/NAME.py[:preset]`` in a checkout, or
``--config=NAME[:preset]`` wherever the package is installed (mmie/cli.py resolves the name).

Each module defines ``get_config(arg=None) -> ml_collections.ConfigDict``.
"""
