"""Chaser: self-hostable sandbox sessions, each in its own QEMU microVM."""

__version__ = "0.1.0"
