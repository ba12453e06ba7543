"""`make demo` end to end, small: entities, plan, QC bank, synth, data card."""
import pytest

from engine.cli.demo import main


@pytest.mark.ray
@pytest.mark.slow
def test_demo_runs_every_step_and_points_to_the_data_card(ray_session, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--n-plan", "300", "--n-synth", "24"]) == 0
    text = capsys.readouterr().out
    for marker in ("== 1.", "== 2.", "== 3.", "== 4.", "QC funnel: attempts", "24/24 samples", "data card:"):
        assert marker in text, marker
    assert (out / "synth" / "DATACARD.md").is_file() and (out / "qc-bank" / "metadata.json").is_file()
    assert "bank: " + str((out / "qc-bank").resolve()) in (out / "synth" / "DATACARD.md").read_text()
