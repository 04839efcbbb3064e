"""Experiment protocols built from ordinary runs (seed 003's pre-train / fine-tune / transfer: ``pretrain``)."""
