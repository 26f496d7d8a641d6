"""It learns: GRPO must teach the tiny random VLM to read a colour off the image.

Three colours, one fixed question: a policy that ignores the image answers correctly at most 1/3 of the
time. The default experiment (``experiment=tiny_color``) must take greedy validation accuracy from the
blind rate to clearly above it. This is the end-to-end proof that signs, masks, rewards and the image path
are right (a flipped advantage sign, a broken response mask or images that never reach the model all keep
accuracy at or below 1/3).
"""

import pytest


@pytest.mark.slow
def test_grpo_learns_to_name_the_colour(compose, tmp_path):
    import lightning as L

    from vrl.build import build_module, build_trainer

    cfg = compose([f"output_dir={tmp_path}", "logger=none", "save_policy=false", "trainer.enable_progress_bar=false"])
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    history = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            history.append(float(trainer.callback_metrics["rollout/accuracy"]))

    trainer = build_trainer(cfg, callbacks=[Record()])
    trainer.fit(module)
    first, last = sum(history[:10]) / 10, sum(history[-20:]) / 20
    val = float(trainer.callback_metrics["val/accuracy"])
    # near zero at the start: a random policy over ~860 tokens names the right colour word < 1% of the time
    assert first < 0.05, history[:10]
    # 96 validation rows: at the blind rate 1/3 the std is sqrt(1/3 * 2/3 / 96) = 0.048, so 0.5 is 3.5 sigma above
    assert val >= 0.5, f"val/accuracy {val:.3f}; train accuracy history tail {history[-20:]}"
    assert last > 0.45, history[-20:]
