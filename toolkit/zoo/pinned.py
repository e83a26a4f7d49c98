"""Pinned sha256 hashes of RobustBench weight files, by path relative to the model directory.

A pinned hash is checked on every load, before anything is unpickled; a mismatch is an
error naming both hashes. Only hashes that can be justified belong here: RobustBench
publishes no checksums for its Google Drive files, and this machine cannot download
them, so the table ships empty. Pin a file here (or per model with the ``sha256``
option) once its hash has been checked against a trusted copy, e.g.::

    PINNED_SHA256 = {
        "cifar10/Linf/Carmon2019Unlabeled.pt": "<64 hex digits>",
    }

Without a pin, rtk records the hash on the first successful load (trust on first use)
and checks it on every later load.
"""

from __future__ import annotations

PINNED_SHA256: dict[str, str] = {}
