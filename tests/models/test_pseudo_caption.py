import numpy as np

from pc2.models.pseudo_caption import assign, soft_label


def test_soft_label_zeroes_below_half():
    assert np.allclose(soft_label(np.array([0.2, 0.5, 0.9])), [0.0, 0.5, 0.9])


def test_pred_strategy_picks_the_most_similar_trusted_pair():
    pred = np.array(
        [
            [1.0, 0.0, 0.0],  # 0 trusted
            [0.0, 1.0, 0.0],  # 1 trusted
            [0.0, 0.0, 1.0],  # 2 trusted
            [0.1, 0.9, 0.0],  # 3 noisy: closest to 1
            [0.0, 0.2, 0.8],  # 4 noisy: closest to 2
            [0.6, 0.0, 0.0],  # 5 noisy but also trusted pair 0 looks alike
        ],
        dtype=np.float32,
    )
    pc = assign(np.array([3, 4]), np.array([0, 1, 2]), pred=pred, img_emb=None, cap_emb=None, strategy="pred")
    assert pc.source.tolist() == [-1, -1, -1, 1, 2, -1]
    cos3 = 0.9 / np.linalg.norm([0.1, 0.9])
    assert abs(pc.label[3] - cos3) < 1e-5


def test_low_similarity_gets_zero_soft_label():
    pred = np.array([[1.0, 0.0], [0.3, 1.0]], dtype=np.float32)  # cosine 0.287 < 0.5
    pc = assign(np.array([1]), np.array([0]), pred=pred, img_emb=None, cap_emb=None, strategy="pred")
    assert pc.source[1] == 0 and pc.label[1] == 0.0


def test_embed_strategy_uses_the_joint_space():
    pred = np.ones((4, 2), dtype=np.float32)  # uninformative predictions
    img = np.array([[1, 0], [0, 1], [0, 0], [0.1, 1.0]], dtype=np.float32)
    cap = np.array([[1, 0], [0, 1], [1, 1], [1, 0]], dtype=np.float32)
    pc = assign(np.array([3]), np.array([0, 1]), pred=pred, img_emb=img, cap_emb=cap, strategy="embed")
    assert pc.source[3] == 1
    assert 0.9 < pc.score[3] <= 1.0


def test_combo_prefers_a_fitting_caption_from_a_similar_image():
    # query image 2; pair 0 has the closest caption but an unrelated image, pair 1 a close caption
    # on a near-identical image
    img = np.array([[0, 0, 1], [0.95, 0.31, 0], [1, 0, 0]], dtype=np.float32)
    cap = np.array([[0.9, 0.436, 0], [0.8, 0.6, 0], [0, 1, 0]], dtype=np.float32)
    pred = np.ones((3, 2), dtype=np.float32)
    kw = dict(pred=pred, img_emb=img, cap_emb=cap)
    assert assign(np.array([2]), np.array([0, 1]), strategy="embed", **kw).source[2] == 0
    pc = assign(np.array([2]), np.array([0, 1]), strategy="combo", **kw)
    assert pc.source[2] == 1
    assert abs(pc.label[2] - (0.8 + 0.95) / 2) < 0.01  # soft label: mean of the two cosines
    assert abs(pc.score[2] - 0.8) < 0.01  # the reported fit is the caption's cosine to the image


def test_combo_with_views_needs_every_network_to_agree():
    # network A has pulled pair 0's caption onto the query image (a memorised mismatch); network B
    # has not. Pair 1 is a fair match for both.
    img_a = np.array([[0.9, 0.436, 0], [0.8, 0.6, 0], [1, 0, 0]], dtype=np.float32)
    cap_a = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0]], dtype=np.float32)
    img_b = np.array([[0, 1, 0], [0.8, 0.6, 0], [1, 0, 0]], dtype=np.float32)
    cap_b = np.array([[0, 0, 1], [0.8, 0.6, 0], [0, 1, 0]], dtype=np.float32)
    pred = np.ones((3, 2), dtype=np.float32)
    alone = assign(np.array([2]), np.array([0, 1]), pred=pred, img_emb=img_a, cap_emb=cap_a, strategy="combo")
    assert alone.source[2] == 0
    both = assign(np.array([2]), np.array([0, 1]), pred=pred, img_emb=img_a, cap_emb=cap_a, strategy="combo",
                  views=[(img_a, cap_a), (img_b, cap_b)])
    assert both.source[2] == 1
    assert abs(both.label[2] - 0.8) < 0.01  # mean over the views of (0.8 + 0.8) / 2


def test_word_grounding_sinks_a_caption_with_one_unseen_word():
    import torch

    from pc2.models.networks import word_grounding

    regions = torch.eye(4)[None, :2]  # the image shows concepts 0 and 1
    words = torch.zeros(1, 3, 2, 4)
    words[0, 0] = torch.eye(4)[[0, 1]]  # "0 1": both seen
    words[0, 1] = torch.eye(4)[[0, 3]]  # "0 3": 3 is not in the image
    words[0, 2, 0] = torch.eye(4)[0]  # "0": one word, seen
    mask = torch.tensor([[[True, True], [True, True], [True, False]]])
    g = word_grounding(regions, words, mask, tau=0.1)[0]
    assert g[0] > g[1] + 0.5  # one ungrounded word outweighs a grounded one
    # the soft minimum of n equally grounded words is g - tau * log(n): every word is a claim
    assert torch.isclose(g[2], torch.tensor(1.0), atol=1e-5)
    assert torch.isclose(g[0], torch.tensor(1.0 - 0.1 * float(np.log(2))), atol=1e-5)
    none = word_grounding(regions, words, torch.zeros_like(mask), tau=0.1)
    assert torch.isinf(none).all() and (none < 0).all()  # a caption without words grounds nothing


def test_grounded_reranks_combo_candidates_and_falls_back_to_combo():
    img = np.array([[0, 0, 1], [0.95, 0.31, 0], [1, 0, 0]], dtype=np.float32)
    cap = np.array([[0.9, 0.436, 0], [0.8, 0.6, 0], [0, 1, 0]], dtype=np.float32)
    kw = dict(pred=np.ones((3, 2), dtype=np.float32), img_emb=img, cap_emb=cap)
    seen = []

    def ground(targets, cand):  # pair 1's caption names something the image lacks
        seen.append((targets.copy(), cand.copy()))
        return np.where(cand == 1, -1.0, 0.0).astype(np.float32)

    assert assign(np.array([2]), np.array([0, 1]), strategy="grounded", **kw).source[2] == 1  # no scorer: combo
    pc = assign(np.array([2]), np.array([0, 1]), strategy="grounded", grounding=[ground, ground], **kw)
    assert pc.source[2] == 0
    assert seen and seen[0][0].tolist() == [2] and set(seen[0][1].ravel().tolist()) <= {0, 1}
    # the soft label stays the combo similarity of the pick, not the grounding-shifted rank
    assert pc.label[2] == 0.0  # pair 0: (cos 0.0 to the caption + cos 0.0 to its image) / 2 is below 1/2
    assert assign(np.array([2]), np.array([0, 1]), strategy="combo", grounding=[ground], **kw).source[2] == 1
