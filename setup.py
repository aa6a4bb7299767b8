"""Package discovery that pyproject.toml alone cannot express.

The Hydra config tree lives in the top-level ``conf/`` folder (the layout users see in the
repository) but is installed as the package ``mlip_plugins.conf`` so that a non-editable
install finds it with ``pkg://mlip_plugins.conf``. ``hydra_plugins`` is a namespace package
(Hydra's rule), which ``find_packages`` would miss.
"""

from setuptools import find_namespace_packages, find_packages, setup

packages = find_packages(include=["mlip_plugins", "mlip_plugins.*", "lightning_modules", "lightning_modules.*"])
# "hydra_plugins" itself too: an editable install then maps its folder, so Hydra's scan finds our plugin
packages += find_namespace_packages(include=["hydra_plugins", "hydra_plugins.*"])
packages.append("mlip_plugins.conf")

setup(packages=packages, package_dir={"mlip_plugins.conf": "conf"})
