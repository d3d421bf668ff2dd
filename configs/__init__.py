"""The study's config files, one `get_config(arg)` each.

A package so that the files and their users import each other by name
(`from configs import arith`). `--config=configs/arith.py:tiny` loads a file
by its path; its `from configs import ...` then finds this package through
the repository root on `sys.path`, which `python -m launch.main` run from the
root (and pytest, `pythonpath = ["."]`) puts there.
"""
