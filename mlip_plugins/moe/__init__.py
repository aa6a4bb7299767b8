"""Mixtures of experts as one family: the layer and readout, routers, analysis and its callback.

* :mod:`.layer`: ``MoEMLP`` (usable in any MLP slot), the ``moe`` readout, ``merge_moe``.
* :mod:`.routers`: the routers of group ``mlip_plugins.routers`` (``element``, ``global``,
  ``feature``) and the shared gating helpers (top-k, load balancing).
* :mod:`.analysis`: routing statistics and the expert-usage PCA; :mod:`.analysis_callback`
  runs it during training (callback ``moe_analysis``); ``mlip-moe`` runs it offline.
"""
