"""Global negatives across ranks: 2 processes (gloo on 127.0.0.1), each holding part of a global
batch of 8, must get the loss of one process over the whole batch, and - after averaging parameter
gradients over ranks as DDP does - the same gradients.

What it covers: `all_gather_with_grad` (forward concatenation, backward sum over ranks of the
incoming gradient, this rank's slice), padding of unequal shapes (each rank tokenises its own texts,
so word counts differ; GLoRIA's ranks hold 5 and 3 pairs), and the models' `loss(gather=True)` for
ConVIRT and GLoRIA through the full encoders. Honesty: the models run in eval mode (BatchNorm uses
running statistics; per-rank batch statistics would differ from full-batch ones by design, that is
not a gather property) and in float64, so a 1e-8 relative tolerance can hold. Every rank computes
the full loss, so its value must equal the reference on every rank.
"""
from __future__ import annotations

import socket

import pytest
import torch

from train.models import create_model, load_model

TEXTS = ["left pleural effusion", "right upper lobe pneumonia", "cardiomegaly with mild edema",
         "no pneumothorax", "bibasilar atelectasis", "the lungs are clear", "small left apical pneumothorax",
         "stable cardiomediastinal silhouette"]
CORPUS = TEXTS * 3
TINY = {"image": {"image_size": 64, "resize_to": 64},
        "text_encoder": {"vocab_size": 200, "min_frequency": 1, "hidden_size": 32, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "intermediate_size": 64}}
SPLITS = {"convirt-resnet18-smallbert": [0, 4, 8], "gloria-resnet18-smallbert": [0, 5, 8]}


def _images() -> torch.Tensor:
    return torch.rand(8, 1, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1


def _model(path):
    return load_model(path).double().eval()


def _loss_and_grads(model, images, texts):
    tok = model.tokenize(texts)
    loss = model.loss(model(images, tok["input_ids"], tok["attention_mask"]))
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _worker(rank: int, port: int, dirs: dict, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {}
        for name, path in dirs.items():
            lo, hi = SPLITS[name][rank], SPLITS[name][rank + 1]
            model = _model(path)
            loss, grads = _loss_and_grads(model, _images()[lo:hi], TEXTS[lo:hi])
            for g in grads.values():  # DDP's convention: average parameter gradients over ranks
                dist.all_reduce(g, op=dist.ReduceOp.SUM)
                g /= dist.get_world_size()
            results[name] = {"loss": loss, "grads": grads}
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_match_one_process_over_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    dirs = {}
    for name in SPLITS:
        torch.manual_seed(0)
        overrides = {**TINY, "head": {"embed_dim": 32}} if name.startswith("gloria") else TINY
        create_model(name, text_corpus=CORPUS, overrides=overrides).save_pretrained(tmp_path / name)
        dirs[name] = str(tmp_path / name)
    mp.spawn(_worker, args=(_free_port(), dirs, str(tmp_path)), nprocs=2, join=True)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; a second thread only costs on a shared machine
    try:
        reference = {name: _loss_and_grads(_model(path), _images(), TEXTS) for name, path in dirs.items()}
    finally:
        torch.set_num_threads(threads)
    for name, (ref_loss, ref_grads) in reference.items():
        for r in range(2):
            assert ranks[r][name]["loss"].item() == pytest.approx(ref_loss.item(), rel=1e-10), (name, r)
        grads = ranks[0][name]["grads"]
        assert set(grads) == set(ref_grads)
        assert len(ref_grads) > 50  # encoders and heads, not only the heads
        for key, ref in ref_grads.items():
            assert torch.allclose(grads[key], ref, rtol=1e-8, atol=1e-12), (name, key)
            assert torch.equal(grads[key], ranks[1][name]["grads"][key])


def test_single_process_is_identity():
    from train.models import gather as distributed

    t = torch.ones(3, requires_grad=True)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.all_gather_with_grad(t) is t and distributed.all_gather_padded(t) is t
