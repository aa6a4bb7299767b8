"""GPUMD's neuroevolution potential (NEP) as one family: descriptor, energy model, files, callback.

* :mod:`.descriptor`: the NEP4 descriptor (radial, angular 3-body, higher-body q_222 ... q_134), plugin ``nep``
  of ``mlip_plugins.descriptors``.
* :mod:`.model`: the ``nep`` energy model (descriptor scaler, per-element tanh networks, ZBL).
* :mod:`.nep_txt`: reading and writing GPUMD's ``nep.txt``; :mod:`.nep_in`: ``nep.in`` keywords
  mapped onto the training config.
* :mod:`.scaler_callback`: the ``nep_scaler`` callback (GPUMD's descriptor scaler from the data).
* :mod:`.qnep`: charge NEPs (neutral charges, Coulomb energy, BEC); :mod:`.tnep`: dipole and
  polarizability NEPs.
* :mod:`.gpumd_outputs` (callback ``gpumd_outputs``) and :mod:`.loss_out`: GPUMD's output files.
* :mod:`.tree_export`: which energy trees are a pure NEP that a nep.txt can hold.

Training with SNES lives with the other Lightning modules (``lightning_modules.snes``); the
generic SNES optimiser is :mod:`mlip_plugins.optim.snes`.
"""
