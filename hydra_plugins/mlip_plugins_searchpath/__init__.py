"""Hydra search-path plugin: installed mlip-plugins packages add their YAML to our config groups.

Hydra imports every module under the namespace package ``hydra_plugins`` and calls each
``SearchPathPlugin`` it finds before composing a config. Ours appends ``pkg://<module>`` for
every entry point of the group ``mlip_plugins.configs``, so a third-party package declares::

    [project.entry-points."mlip_plugins.configs"]
    mypkg = "mypkg.conf"

and its ``mypkg/conf/model/descriptor/foo.yaml`` becomes ``mlip-train model/descriptor=foo``
with no ``--config-dir``. Appended paths come after the core tree, so a plugin adds options
to a group but never shadows a core file of the same name.

The plugin class lives in :mod:`.searchpath` only and is not re-exported here: Hydra executes
every module of the namespace afresh, and a re-export would register the plugin twice.
"""
