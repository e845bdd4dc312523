"""What a kill at a bad moment leaves behind is never mistaken for real data and is cleaned up."""

import numpy as np
import pytest

from _store_helpers import make_doc
from arc_encoder.model.saved import WEIGHTS_FILE
from arc_encoder.storage import BM25Index, VectorStore
from arc_encoder.storage import store as store_module
from arc_encoder.training import checkpoint as ckpt


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


def test_a_kill_while_creating_a_store_leaves_nothing_a_rerun_trips_on(tmp_path, monkeypatch):
    def killed(*_):
        raise Killed

    monkeypatch.setattr(store_module, "_split_sql", killed)  # dies inside the schema transaction
    with pytest.raises(Killed):
        VectorStore.create(tmp_path / "store", "fp", 8)
    assert not (tmp_path / "store").exists()  # no half-made store (it used to leave a 0-byte meta.sqlite)
    monkeypatch.undo()
    with VectorStore.create(tmp_path / "store", "fp", 8) as store:
        assert store.stats().n_docs == 0


def test_a_kill_while_pruning_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "run" / ckpt.CHECKPOINTS
    for step in (1, 2, 3):
        folder = root / f"step_{step:08d}"
        (folder / "encoder").mkdir(parents=True)
        for name in (ckpt.STATE_FILE, WEIGHTS_FILE, "encoder/config.json"):
            (folder / name).write_text("x")
    real_rmtree = ckpt.shutil.rmtree

    def killed_halfway(path, *args, **kwargs):
        (path / ckpt.STATE_FILE).unlink()  # some files are gone, then the kill
        raise Killed

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_halfway)
    with pytest.raises(Killed):
        ckpt.prune(tmp_path / "run", keep=2)
    # the half-deleted folder is no longer a step_* folder: nothing will try to load it
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("step_")) == ["step_00000002", "step_00000003"]
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    ckpt.prune(tmp_path / "run", keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000003"]


def test_a_kill_during_a_bm25_build_leaves_debris_the_next_build_removes(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    import arc_encoder.storage.retrieval as retrieval

    rng = np.random.default_rng(0)
    real_folder = retrieval.write_folder

    def write_then_die(final, write):
        def write_and_kill(tmp):
            write(tmp)
            raise Killed

        return real_folder(final, write_and_kill)

    with VectorStore.create(tmp_path / "store", "fp", 8) as store:
        store.add("doc-0", *make_doc(rng, 8))
        monkeypatch.setattr(retrieval, "write_folder", write_then_die)
        with pytest.raises(Killed):
            BM25Index.build(store)
        (store.path / ".tmp-bm25-abc123").mkdir()  # what a SIGKILL (no cleanup at all) leaves
        monkeypatch.setattr(retrieval, "write_folder", real_folder)
        BM25Index.build(store)
        assert list(store.path.glob(".tmp-bm25-*")) == [] and (store.path / "bm25" / "meta.json").is_file()
