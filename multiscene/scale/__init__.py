"""Scaling out (SPEC §8): sweeps of config fields and seeds on Ray Tune (``multiscene sweep``)."""

from __future__ import annotations
