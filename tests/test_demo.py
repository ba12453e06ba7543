"""`make demo` end to end, small: entities, plan, QC bank, synth, data card, ConVIRT training and
zero-shot evaluation, ending with the mean zero-shot AUC."""
import re

import pytest
import yaml

from workflows.demo import main


@pytest.mark.ray
@pytest.mark.slow
def test_demo_runs_the_whole_loop_and_ends_with_the_mean_auc(ray_session, tmp_path, capsys):
    out = tmp_path / "demo"
    train = yaml.safe_load(open("configs/train-local.yaml"))
    train.update(epochs=1, batch_size=8, validation={"size": 8, "batch_size": 8, "metric": "val_i2t_r10"})
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    assert main(["--out", str(out), "--n-plan", "300", "--n-synth", "40", "--train-config",
                 str(tmp_path / "train.yaml"), "--eval-per-class", "4"]) == 0
    text = capsys.readouterr().out
    for marker in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5.", "== 6.", "QC funnel: attempts", "40/40 samples",
                   "data card:"):
        assert marker in text, marker
    assert (out / "synth" / "DATACARD.md").is_file() and (out / "qc-bank" / "metadata.json").is_file()
    assert "bank: " + str((out / "qc-bank").resolve()) in (out / "synth" / "DATACARD.md").read_text()
    assert (out / "train" / "model").is_dir() and (out / "eval" / "results.json").is_file()
    last = text.strip().splitlines()[-1]
    auc = float(re.fullmatch(r"mean zero-shot AUC: (\d\.\d{3})", last).group(1))
    assert 0.0 <= auc <= 1.0
