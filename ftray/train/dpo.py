"""Preference tuning: sigmoid DPO (Rafailov et al., 2023) in ftray's own training loop.

The loss is written here rather than taken from TRL: TRL (1.16) computes it inside
`DPOTrainer._compute_loss`, a method of its own Trainer that runs the forward passes itself,
so using it would mean a second training loop beside `ftray.train.loop` (and its resume,
sharding and Ray Train wiring). The loss itself is a few lines:

    loss = -log σ(β · ((log π(chosen) - log ref(chosen)) - (log π(rejected) - log ref(rejected))))

on each answer's summed completion-token log-probabilities. The reference is the base model
with the LoRA adapter switched off (peft's `disable_adapter`), so no second copy is held.

A pair batch is one padded batch: the chosen answers in the first half of the rows, the
rejected ones (same prompts, same order) in the second half.
"""

from __future__ import annotations

from ftray.data.tokenize import IGNORE_INDEX
from ftray.train.collate import collate
from ftray.train.context import WorkerContext, all_reduce_sum

PAIR_COLUMNS = ["input_ids", "labels", "rejected_input_ids", "rejected_labels"]


def collate_pairs(raw: dict, device="cpu") -> dict:
    """One padded batch from a batch of pairs: chosen rows, then rejected rows."""
    return collate(
        {
            "input_ids": [*raw["input_ids"], *raw["rejected_input_ids"]],
            "labels": [*raw["labels"], *raw["rejected_labels"]],
        },
        device=device,
    )


def sequence_logps(logits, labels):
    """Per row: the summed log-probability of its label tokens (after the causal shift)."""
    import torch.nn.functional as F

    shifted = labels[:, 1:]
    # cross_entropy gives 0 where the label is ignored and never materialises the full
    # log-softmax a second time
    token_nll = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), shifted, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return -token_nll.sum(dim=1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """(loss per pair, margin per pair): the sigmoid DPO loss and the implicit reward margin
    β·(chosen log-ratio - rejected log-ratio), which is > 0 where the pair is ranked right."""
    import torch.nn.functional as F

    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


def pair_loss_sum(model, module, batch: dict, beta: float):
    """Summed DPO loss of a pair batch, and the margins: the policy through `model` (the
    DDP-wrapped adapter, with gradients), the reference through `module` (the bare peft
    model) with its adapter disabled and no gradients."""
    import torch

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad(), module.disable_adapter():
        reference = sequence_logps(module(**inputs, use_cache=False).logits, batch["labels"])
    policy = sequence_logps(model(**inputs, use_cache=False).logits, batch["labels"])
    half = batch["labels"].shape[0] // 2
    losses, margins = dpo_loss(
        policy[:half], policy[half:], reference[:half], reference[half:], beta
    )
    return losses.sum(), margins


def evaluate_pairs(model, module, ctx: WorkerContext, batch_size: int, beta: float):
    """(mean DPO loss, preference accuracy) on the validation pairs, over all workers; the
    accuracy is the share of pairs whose margin is > 0."""
    import torch

    model.eval()
    totals = torch.zeros(3, device=ctx.device)  # loss sum, pairs ranked right, pairs
    with torch.no_grad():
        for raw in ctx.batches("validation", batch_size, 0):
            loss, margins = pair_loss_sum(model, module, collate_pairs(raw, ctx.device), beta)
            totals += torch.stack(
                [loss, (margins > 0).sum().float(), margins.new_tensor(len(margins))]
            )
    model.train()
    loss_sum, right, pairs = (float(v) for v in all_reduce_sum(totals))
    if not pairs:
        return float("nan"), None
    return round(loss_sum / pairs, 5), round(right / pairs, 5)
