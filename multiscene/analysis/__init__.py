"""Analyses of run directories: ``multiscene report`` (one run) and ``multiscene compare`` (many) (issue 4).

``rundata`` reads a run directory into a typed record, ``stats`` computes the numbers, ``figures`` draws them,
``report`` and ``compare`` are the two commands. Everything reads files only (SPEC §7).
"""
