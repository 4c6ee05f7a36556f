import torch

from orthokit.bench.models import MLP, CharGPT, SmallCNN


def test_chargpt_loss_near_log_vocab_at_init():
    m = CharGPT(vocab_size=65, d_model=32, n_layer=2, n_head=4, block_size=16)
    idx = torch.randint(65, (2, 16))
    logits, loss = m(idx, idx)
    assert logits.shape == (2, 16, 65)
    assert abs(float(loss) - torch.log(torch.tensor(65.0)).item()) < 0.3


def test_mlp_and_cnn_shapes():
    assert MLP([784, 100, 100, 10])(torch.randn(3, 784)).shape == (3, 10)
    assert SmallCNN()(torch.randn(3, 784)).shape == (3, 10)
