"""A pack's prompt embeddings: frozen ones encoded once, live ones through the packed text encoder."""

from __future__ import annotations

from lora_core.training.inputs import PromptTable


class PackPrompts:
    """The prompt tables of a pack: one frozen (encoded once), one live (the text encoder runs packed).

    The live table serves the configurations that train the text encoder; ``routing`` says whose adapters
    apply.

    Args:
        pipe: The pipeline.
        device: Where the embeddings go.
        prompts: Every prompt of the table (instance, captions, class, and ``""`` for caption dropout).
        captions: One caption per subject picture.
        trains_text: Per configuration, whether it trains the text encoder.
        routing: The text encoder's routing.
    """

    def __init__(
        self, pipe, device, prompts: list[str], captions: list[str], trains_text: list[bool], routing
    ):
        self.trains_text, self.routing = trains_text, routing
        self.frozen = PromptTable(pipe, device, prompts, captions, True) if not all(trains_text) else None
        self.live = PromptTable(pipe, device, prompts, captions, False) if any(trains_text) else None

    @property
    def rows(self) -> PromptTable:
        """A table for row numbers (both tables number their prompts alike)."""
        return self.frozen or self.live

    def table_of(self, k: int) -> PromptTable:
        """Configuration ``k``'s table, the text encoder routed to it alone (its validation loss)."""
        self.routing.active = [k] if self.trains_text[k] else []
        return self.live if self.trains_text[k] else self.frozen

    def embeddings(self, active: list[int], rows: list[list[int]]):
        """The embeddings of each active configuration's rows, in slice order (one text-encoder pass)."""
        import torch

        live = [k for k in active if self.trains_text[k]]
        by_config = {}
        if live:
            self.routing.active = live
            ids = [rows[active.index(k)] for k in live]
            out = self.live.embeddings([r for part in ids for r in part])
            by_config |= dict(zip(live, out.split([len(p) for p in ids]), strict=True))
        for k, part in zip(active, rows, strict=True):
            if k not in by_config:
                by_config[k] = self.frozen.embeddings(part)
        return torch.cat([by_config[k] for k in active])
