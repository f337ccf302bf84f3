"""Providers that fail the way a Ray worker does, once, for the fault tests of the Ray jobs:
the hashing embedder, except on the first batch holding ``trigger``."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
from toy_plugin import ToyHashEmbeddings

from embedsearch.embeddings import register


def _first_time(marker: str) -> bool:
    """True for the one caller that creates ``marker`` (across processes and retries)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@register("dies-once")
class DiesOnce(ToyHashEmbeddings):
    """Its process is killed (SIGKILL) on the first batch holding ``trigger``: a Ray worker
    lost mid-job. The retried batch finds ``marker`` and embeds."""

    trigger: str = ""
    marker: str = ""

    def generate_embeddings(self, texts: list[str]) -> np.ndarray:
        if self.trigger in texts and _first_time(self.marker):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().generate_embeddings(texts)


@register("hangs-once")
class HangsOnce(ToyHashEmbeddings):
    """Hangs on the first batch holding ``trigger``, having created ``marker``: the job is
    then under way, for a test to kill its driver. Later runs embed."""

    trigger: str = ""
    marker: str = ""

    def generate_embeddings(self, texts: list[str]) -> np.ndarray:
        if self.trigger in texts and _first_time(self.marker):
            time.sleep(3600)
        return super().generate_embeddings(texts)
