"""Adapters that let other RL frameworks call the iama objective.

Each submodule imports its framework; this package imports nothing, so `import iama` never pulls one in.

- `iama.integrations.verl`: advantage estimators for verl (`pip install 'iama[verl]'`), loaded by verl itself
  through the `verl.plugins` entry point or `VERL_USE_EXTERNAL_MODULES=iama.integrations.verl`.
"""
