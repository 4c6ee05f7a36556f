import pytest
import torch

from orthokit.bench import data


def test_data_dir_found(data_dir):
    assert (data_dir / "tinyshakespeare.txt").is_file()


def test_missing_data_dir_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "_candidates", lambda: [tmp_path / "nope"])
    with pytest.raises(data.DataNotFoundError, match="shared/ folder"):
        data.data_dir()


def test_mnist_shapes_and_ranges():
    (xtr, ytr), (xte, yte) = data.load_mnist(limit=500)
    assert xtr.shape == (500, 784) and xte.shape == (500, 784)
    assert 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0
    assert set(ytr.tolist()) <= set(range(10))


def test_char_corpus_roundtrip_and_split():
    c = data.char_corpus("tinyshakespeare")
    assert c.vocab_size == 65
    assert len(c.train) > 8 * len(c.val) > 0
    assert c.decode(c.encode("To be, or not")) == "To be, or not"
    x, y = data.get_batch(c.train, 4, 16, torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 1:], y[:, :-1])
