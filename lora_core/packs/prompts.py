"""A pack's prompt embeddings: frozen ones encoded once, live ones through the packed text encoder."""

from __future__ import annotations

from lora_core.training.inputs import PromptTable


class PackPrompts:
    """The prompt tables of a pack: one frozen (encoded once), one live (the text encoders run packed).

    The live table serves the configurations that train a text encoder; ``routings`` (one per text encoder)
    say whose adapters apply. A configuration that trains one of SDXL's text encoders and not the other
    takes the other's frozen layers: its stacks there are zero (the base layer's output).

    Args:
        pipe: The pipeline.
        device: Where the embeddings go.
        prompts: Every prompt of the table (instance, captions, class, and ``""`` for caption dropout).
        captions: One caption per subject picture.
        trains_text: Per configuration, whether it trains a text encoder.
        routings: Each text encoder's routing.
    """

    def __init__(
        self, pipe, device, prompts: list[str], captions: list[str], trains_text: list[bool], routings: list
    ):
        self.trains_text, self.routings = trains_text, routings
        self.frozen = PromptTable(pipe, device, prompts, captions, True) if not all(trains_text) else None
        self.live = PromptTable(pipe, device, prompts, captions, False) if any(trains_text) else None

    @property
    def rows(self) -> PromptTable:
        """A table for row numbers (both tables number their prompts alike)."""
        return self.frozen or self.live

    def _route(self, active: list[int]) -> None:
        for routing in self.routings:
            routing.active = list(active)

    def table_of(self, k: int) -> PromptTable:
        """Configuration ``k``'s table, the text encoders routed to it alone (its validation loss)."""
        self._route([k] if self.trains_text[k] else [])
        return self.live if self.trains_text[k] else self.frozen

    def conditioning(self, active: list[int], rows: list[list[int]]) -> tuple:
        """``(embeddings, pooled)`` of each active configuration's rows, in slice order.

        The live configurations' rows go through the text encoders in one pass; pooled is None but for SDXL.
        """
        import torch

        live = [k for k in active if self.trains_text[k]]
        by_config = {}
        if live:
            self._route(live)
            ids = [rows[active.index(k)] for k in live]
            embeds, pooled = self.live.conditioning([r for part in ids for r in part])
            sizes = [len(p) for p in ids]
            pooled = pooled.split(sizes) if pooled is not None else [None] * len(live)
            by_config |= dict(zip(live, zip(embeds.split(sizes), pooled, strict=True), strict=True))
        for k, part in zip(active, rows, strict=True):
            if k not in by_config:
                by_config[k] = self.frozen.conditioning(part)
        embeds = torch.cat([by_config[k][0] for k in active])
        pooled = [by_config[k][1] for k in active]
        return embeds, None if pooled[0] is None else torch.cat(pooled)
