"""The TRL loop's callback and log readers (webtune.training.callback): the final train loss, and the NaN
guard stopping a run before any adapter is written."""

import shutil

import pytest
import torch

from tests.stages.test_train import run_train, small_params
from webtune.models import INFO_FILE, MODEL_DIR, TOKENIZER_DIR, load_base
from webtune.training import TrainError
from webtune.training.callback import final_train_loss


def test_the_final_train_loss_is_the_mean_of_the_last_tenth_of_the_logs():
    history = [{"loss": float(i), "step": i} for i in range(1, 21)] + [{"eval_loss": 0.5, "step": 20}]
    assert final_train_loss(history) == 19.5  # the last 2 of 20 logged losses; eval entries do not count
    assert final_train_loss([{"loss": 3.0}]) == 3.0


def test_a_nan_loss_stops_training_and_writes_no_adapter(tmp_path, tiny_base):
    broken = tmp_path / "base"
    shutil.copytree(tiny_base / TOKENIZER_DIR, broken / TOKENIZER_DIR)
    model = load_base(tiny_base).model
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
    model.save_pretrained(broken / MODEL_DIR)
    shutil.copy(tiny_base / MODEL_DIR / INFO_FILE, broken / MODEL_DIR / INFO_FILE)
    with pytest.raises(TrainError, match=r"loss is nan at step 0: training diverged"):
        run_train(tmp_path, broken, small_params(), n_train=8, n_val=4)
    assert not (tmp_path / "adapter").exists()
