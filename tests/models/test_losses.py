import torch

from pc2.models.losses import pcls_loss, pseudo_caption_triplet, soft_margin, triplet_avg, triplet_hardest


def test_soft_margin_values():
    y = torch.tensor([0.0, 0.5, 1.0])
    m = soft_margin(y, 0.2)
    expected = 0.2 * (10 ** y - 1) / 9
    assert torch.allclose(m, expected)
    assert m[0] == 0 and abs(float(m[2]) - 0.2) < 1e-6
    assert abs(float(m[1]) - 0.2 * (10 ** 0.5 - 1) / 9) < 1e-6


def test_hardest_triplet_margin_follows_the_anchor_in_both_directions():
    # Pair 0 has margin 0.2, pair 1 margin 0; positives 0.5, every negative 0.4.
    sims = torch.tensor([[0.5, 0.4], [0.4, 0.5]])
    margins = torch.tensor([0.2, 0.0])
    loss = triplet_hardest(sims, margins)
    # anchor 0: image 0 vs caption 1 -> 0.2+0.4-0.5 = 0.1; caption 0 vs image 1 -> 0.1 => 0.2
    # anchor 1: margin 0 -> 0.4-0.5 < 0 in both directions => 0
    assert torch.allclose(loss, torch.tensor([0.2, 0.0]), atol=1e-6)
    # Swapping which pair carries the margin swaps the losses: the margin is the anchor's, not the negative's.
    loss_swapped = triplet_hardest(sims, margins.flip(0))
    assert torch.allclose(loss_swapped, torch.tensor([0.0, 0.2]), atol=1e-6)


def test_hardest_triplet_uses_the_hardest_negative_per_direction():
    sims = torch.tensor([[0.9, 0.1, 0.8], [0.0, 0.9, 0.0], [0.3, 0.0, 0.9]])
    m = torch.full((3,), 0.2)
    loss = triplet_hardest(sims, m)
    # anchor 0: i2t hardest 0.8 -> 0.1; t2i column 0 hardest 0.3 -> 0 ; anchor 2: i2t 0.3 -> 0, t2i col 2 hardest 0.8 -> 0.1
    assert torch.allclose(loss, torch.tensor([0.1, 0.0, 0.1]), atol=1e-6)


def test_triplet_avg_averages_over_negatives():
    sims = torch.tensor([[0.5, 0.6, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5]])
    loss = triplet_avg(sims, 0.2)
    # anchor 0 i2t: (0.3 + 0)/2 ; t2i column 0: 0 ; anchor 1 t2i column 1: (0.3+0)/2
    assert torch.allclose(loss, torch.tensor([0.15, 0.15, 0.0]), atol=1e-6)


def test_pseudo_caption_triplet_targets_its_column():
    sims = torch.tensor([[0.2, 0.7, 0.1]])
    loss = pseudo_caption_triplet(sims, torch.tensor([1]), torch.tensor([0.2]))
    assert torch.allclose(loss, torch.tensor([0.0]))  # 0.2 + 0.2 - 0.7 < 0
    loss = pseudo_caption_triplet(sims, torch.tensor([2]), torch.tensor([0.2]))
    assert torch.allclose(loss, torch.tensor([0.8]), atol=1e-6)  # 0.2 + 0.7 - 0.1


def test_pcls_entropy_is_on_the_batch_mean():
    # Every sample predicts class 0 with certainty: per-sample entropy 0, batch-mean entropy 0 too;
    # half predict 0, half 1: per-sample entropy 0 but batch-mean entropy log 2.
    logits = torch.tensor([[20.0, 0.0], [0.0, 20.0]])
    caps = logits.clone()
    batch = pcls_loss(logits, caps, lam=1.0, form="batch_mean")
    per = pcls_loss(logits, caps, lam=1.0, form="per_sample")
    assert abs(float(per - batch) - float(torch.log(torch.tensor(2.0)))) < 1e-3
