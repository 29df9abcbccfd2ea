"""What an embedder adapter feeds its network: the batches its forward receives, decoded."""

from __future__ import annotations

from types import ModuleType


def record_forward(monkeypatch, module: ModuleType, forward: str) -> list:
    """Every processor output `module.<forward>(model, inputs, device)` receives, in order
    (the forward still runs)."""
    seen, original = [], getattr(module, forward)

    def spy(model, inputs, device):
        seen.append(inputs)
        return original(model, inputs, device)

    monkeypatch.setattr(module, forward, spy)
    return seen


def decoded(tokenizer, inputs) -> list[str]:
    """Each row's real (non-pad) tokens as text, special tokens kept."""
    return [tokenizer.decode(ids[mask.bool()], skip_special_tokens=False)
            for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]
