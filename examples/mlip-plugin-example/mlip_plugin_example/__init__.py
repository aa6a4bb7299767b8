"""Example mlip-plugins plugin package: a Gaussian radial descriptor and an epoch-timer callback.

Nothing here is imported by mlip-plugins until a config names one of our plugins: the
entry points in ``pyproject.toml`` tell the registry where the classes live.
"""

__version__ = "0.1.0"
