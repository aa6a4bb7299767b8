"""The Hydra config tree of mlip-plugins (installed as ``mlip_plugins.conf``)."""
