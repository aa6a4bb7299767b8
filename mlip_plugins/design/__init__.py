"""Fisher-guided adaptive model design (``mlip-design``).

Start from a single-term model, train it, evaluate errors on several properties and its
Fisher information, reconfigure (add / multiply a term, swap linear and nonlinear readouts,
resize a basis, remove an all-sloppy term) and repeat within a trial budget. See
:mod:`mlip_plugins.design.loop` for the search and :mod:`mlip_plugins.design.space` for moves.
"""

from mlip_plugins.design.loop import AdaptiveDesign, DesignSettings, Trial
from mlip_plugins.design.space import DesignLimits, describe, propose_moves
from mlip_plugins.design.training import TrainSettings, train_potential

__all__ = ["AdaptiveDesign", "DesignLimits", "DesignSettings", "TrainSettings", "Trial", "describe", "propose_moves", "train_potential"]
