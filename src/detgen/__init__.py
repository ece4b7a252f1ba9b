"""detgen: learned detector simulation with conditional generative models."""

from __future__ import annotations

__version__ = "0.1.0"
