"""Hydra config tree of this plugin package (mirrors mlip-plugins' ``conf/``).

Listed under the entry-point group ``mlip_plugins.configs``; mlip-plugins' search-path
plugin appends ``pkg://mlip_plugin_example.conf`` to the ``mlip-train`` search path.
"""
