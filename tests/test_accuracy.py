"""Accuracy on real data (issue 3's bar), averaged over 5 seeds; each seed re-splits the data,
re-pretrains, and tunes every method's learning rate on its validation split (never the test).

Scenario: scikit-learn digits pretrained on the original images, personalised to a "device" that
sees every image through its own shift and contrast change (experiments.py).  Bar: int8 + QAS
within 2 points of fp32 fine-tuning of the same trainable subset, and 10 points above the
pretrained model.  BasicMotions (too few test samples for a bar) is reported by `make bench`.
"""

from research import experiments


def test_digits_int8_qas_matches_fp32_and_beats_the_pretrained_model():
    results, mean, n_test = experiments.run(experiments.digits_scenario(), "sparse", seeds=range(5), workers=2)
    for r in results:
        print(r)
    print("mean", mean, "test samples", n_test)
    assert n_test >= 360
    assert mean["int8_qas"] >= mean["fp32"] - 0.02
    assert mean["int8_qas"] >= mean["pretrained"] + 0.10
