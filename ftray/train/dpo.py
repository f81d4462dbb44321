"""Preference tuning: sigmoid DPO (Rafailov et al., 2023) in ftray's own training loop.

The loss is written here rather than taken from TRL: TRL (1.16) computes it inside
`DPOTrainer._compute_loss`, a method of its own Trainer that runs the forward passes itself,
so using it would mean a second training loop beside `ftray.train.loop` (and its resume,
sharding and Ray Train wiring). The loss itself is a few lines:

    loss = -log σ(β · ((log π(chosen) - log ref(chosen)) - (log π(rejected) - log ref(rejected))))

on each answer's summed completion-token log-probabilities. For an adapter the reference is
the base model with the adapter switched off (peft's `disable_adapter`), so no second copy is
held; for a full fine-tune it is a frozen copy of the initial weights (`frozen_reference`).

A pair batch is one padded batch: the chosen answers in the first half of the rows, the
rejected ones (same prompts, same order) in the second half, and each pair's weight
(`weights`, 1 unless the data gives one): the loss is the weighted mean over the pairs.
"""

from __future__ import annotations

from ftray.data.tokenize import IGNORE_INDEX
from ftray.models import load_model
from ftray.train.collate import collate
from ftray.train.context import WorkerContext, all_reduce_sum

PAIR_COLUMNS = ["input_ids", "labels", "rejected_input_ids", "rejected_labels", "weight"]


def collate_pairs(raw: dict, device="cpu") -> dict:
    """One padded batch from a batch of pairs: chosen rows, then rejected rows, and the
    pairs' weights."""
    import torch

    batch = collate(
        {
            "input_ids": [*raw["input_ids"], *raw["rejected_input_ids"]],
            "labels": [*raw["labels"], *raw["rejected_labels"]],
        },
        device=device,
    )
    batch["weights"] = torch.tensor(raw["weight"], dtype=torch.float32, device=device)
    return batch


def adapter_off(module):
    """The reference of an adapter policy: `module` (a peft model) with its adapter off."""

    def logits(**inputs):
        with module.disable_adapter():
            return module(**inputs, use_cache=False).logits

    return logits


def frozen_reference(model_dir: str, dtype: str, device):
    """The reference of a full fine-tune: the initial weights loaded again, in the policy's
    compute dtype, on its device, in eval mode and without gradients (so no optimizer state).
    Loaded from `model_dir`, never from a checkpoint: a resumed run keeps the initial model."""
    model = load_model(model_dir, dtype).to(device).eval().requires_grad_(False)
    return lambda **inputs: model(**inputs, use_cache=False).logits


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


def pair_loss_sum(model, reference, batch: dict, beta: float):
    """Weighted sum of a pair batch's DPO losses, and the margins: the policy through
    `model` (with gradients), the reference logits from `reference(**inputs)` (no gradients;
    `adapter_off` or `frozen_reference`)."""
    import torch

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        ref = sequence_logps(reference(**inputs), batch["labels"])
    policy = sequence_logps(model(**inputs, use_cache=False).logits, batch["labels"])
    half = batch["labels"].shape[0] // 2
    losses, margins = dpo_loss(policy[:half], policy[half:], ref[:half], ref[half:], beta)
    return (losses * batch["weights"]).sum(), margins


def step_loss(model, reference, batch: dict, beta: float, total_weight):
    """This micro-batch's part of the step's weighted mean DPO loss: its weighted loss sum
    over `total_weight`, the pairs' weights summed over the whole step on all workers. A step
    whose pairs all weigh 0 has loss 0 and no gradient (not 0/0)."""
    return pair_loss_sum(model, reference, batch, beta)[0] / total_weight.clamp(min=1e-12)


def evaluate_pairs(model, reference, ctx: WorkerContext, batch_size: int, beta: float):
    """(weighted mean DPO loss, preference accuracy) on the validation pairs, over all
    workers; the accuracy is the share of pairs whose margin is > 0."""
    import torch

    model.eval()
    totals = torch.zeros(4, device=ctx.device)  # weighted loss sum, weights, right, pairs
    with torch.no_grad():
        for raw in ctx.batches("validation", batch_size, 0):
            batch = collate_pairs(raw, ctx.device)
            loss, margins = pair_loss_sum(model, reference, batch, beta)
            ranked = (margins > 0).sum().float()
            totals += torch.stack(
                [loss, batch["weights"].sum(), ranked, margins.new_tensor(len(margins))]
            )
    model.train()
    loss_sum, weight, right, pairs = (float(v) for v in all_reduce_sum(totals))
    if not pairs:
        return float("nan"), None
    loss = round(loss_sum / weight, 5) if weight else float("nan")
    return loss, round(right / pairs, 5)
