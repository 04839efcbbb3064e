"""Analyses of run directories: ``multiscene report`` (one run), ``multiscene compare`` (many) (issue 4) and
``multiscene runs`` (a status table, issue 15).

``rundata`` reads a run directory into a typed record, ``stats`` computes the numbers, ``figures`` draws them,
``report``, ``compare`` and ``runs`` are the commands. Everything reads files only (SPEC §7).
"""
