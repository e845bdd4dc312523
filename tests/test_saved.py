"""model/saved.py: the one shape check (`load_state`) in its three uses, and `locate`."""

import pytest
import torch

from arc_encoder.model.arc import ARCModel
from arc_encoder.model.saved import load_state, locate


def test_a_full_load_wants_exactly_the_trained_tensors(tiny_arc):
    source, target = tiny_arc(seed=1), tiny_arc(seed=2)
    state = {k: v.clone() for k, v in source.trained_state().items()}
    assert not any(k.startswith("decoders.") for k in state)
    load_state(target, state, "here")
    for name, value in state.items():
        assert torch.equal(target.trained_state()[name], value), name
    with pytest.raises(ValueError, match=r"here does not match:\s+unknown key\(s\): \['extra'\]"):
        load_state(target, {**state, "extra": torch.zeros(1)}, "here")
    with pytest.raises(ValueError, match=r"missing key\(s\): \['adapters.0.rec'\]"):
        load_state(target, {k: v for k, v in state.items() if k != "adapters.0.rec"}, "here")
    n = state["adapters.0.rec"].shape[0]
    with pytest.raises(ValueError, match=rf"shape mismatch: adapters.0.rec: expected \({n},\), found \(3,\)"):
        load_state(target, {**state, "adapters.0.rec": torch.zeros(3)}, "here")


def test_a_delta_may_leave_out_backbone_tensors_only(tiny_arc):
    model = tiny_arc(seed=3)
    kept = model.trained_state()["encoder.layers.0.mlp.up_proj.weight"].clone()
    delta = {
        k: torch.full_like(v, 0.5) for k, v in model.trained_state().items() if not k.startswith("encoder.layers.0.")
    }
    load_state(model, delta, "delta", delta=True)
    after = model.trained_state()
    assert torch.equal(after["encoder.layers.0.mlp.up_proj.weight"], kept)  # left out: the backbone's value
    assert bool((after["adapters.0.rec"] == 0.5).all())
    with pytest.raises(ValueError, match=r"missing key\(s\): \['adapters.0.cont'\]"):
        load_state(model, {k: v for k, v in delta.items() if k != "adapters.0.cont"}, "delta", delta=True)


def test_a_key_map_reads_only_what_it_names(tiny_arc):
    """A warm start: the model's tensors from other names in the file, whatever else it holds."""
    model = tiny_arc(seed=4)
    before = {k: v.clone() for k, v in model.trained_state().items()}
    n = before["adapters.0.rec"].shape[0]
    file = {"adapters.1.rec": torch.full((n,), 2.0), "adapters.1.cont": torch.full((n,), 3.0), "other": torch.ones(5)}
    load_state(model, file, "warm", sources={"adapters.0.rec": "adapters.1.rec", "adapters.0.cont": "adapters.1.cont"})
    after = model.trained_state()
    assert bool((after["adapters.0.rec"] == 2.0).all()) and bool((after["adapters.0.cont"] == 3.0).all())
    assert all(torch.equal(after[k], v) for k, v in before.items() if k not in ("adapters.0.rec", "adapters.0.cont"))
    with pytest.raises(ValueError, match=r"missing key\(s\): \['adapters.0.rec'\]"):
        load_state(model, file, "warm", sources={"adapters.0.rec": "adapters.2.rec"})
    with pytest.raises(ValueError, match=rf"shape mismatch: adapters.0.rec: expected \({n},\), found \(5,\)"):
        load_state(model, file, "warm", sources={"adapters.0.rec": "other"})


def test_locate_reads_a_run_folder_as_its_latest_checkpoint(tiny_arc, tmp_path):
    model = tiny_arc(seed=5)
    for step in (2, 4):
        folder = tmp_path / "run" / "checkpoints" / f"step_{step:08d}"
        model.save_pretrained(folder)
        (folder / "trainer_state.pt").write_bytes(b"")
    (tmp_path / "run" / "checkpoints" / "step_00000006").mkdir()  # incomplete: no weights, no state
    assert locate(tmp_path / "run").folder == tmp_path / "run" / "checkpoints" / "step_00000004"
    assert locate(tmp_path / "run" / "checkpoints" / "step_00000002").folder.name == "step_00000002"
    loaded = ARCModel.from_pretrained(tmp_path / "run")
    assert loaded.fingerprint() == model.fingerprint()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"model.init_from: .*empty is neither a saved model folder"):
        locate(tmp_path / "empty", role="model.init_from")
