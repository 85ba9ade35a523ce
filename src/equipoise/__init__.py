"""equipoise: fitting physical models to experimental data by gradient descent.

Objectives are sums of named terms whose weights, shares and gradients are observable
(`equipoise.core`); applications build on that core (`equipoise.diffraction`, ...).
"""

__version__ = "0.1.0"
