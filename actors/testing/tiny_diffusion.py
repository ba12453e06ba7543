"""A tiny random-weight StableDiffusionPipeline saved in the diffusers layout of a RoentGen
checkout (UNet, VAE, CLIP text encoder with a byte-level BPE tokenizer, PNDM scheduler), so the
real loading and batching code of the diffusers backend runs in tests without weights."""
from __future__ import annotations

import json
from pathlib import Path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to 256+."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


TINY_WORDS = ("no", "pleural", "effusion", "pneumothorax", "consolidation", "cardiomegaly", "edema", "the",
              "lungs", "are", "clear", "heart", "size", "normal", "left", "right", "lower", "lobe", "of",
              "is", "there", "mild", "small", "large", "acute", "cardiopulmonary", "process", "and")


def write_tiny_clip_tokenizer(directory: Path, words=TINY_WORDS) -> int:
    """vocab.json + merges.txt in the CLIP BPE format: the byte alphabet, plus merges that build
    a few report words. Returns the vocabulary size."""
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(tok, len(vocab))
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            rule = f"{a} {b}"
            if rule not in merges:
                merges.append(rule)
            vocab.setdefault(a + b, len(vocab))
            pieces = [a + b] + pieces[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def save_tiny_pipeline(directory: str | Path, sample_size: int = 32, seed: int = 0) -> Path:
    """A random-weight StableDiffusionPipeline with RoentGen's layout (UNet2DConditionModel,
    AutoencoderKL, CLIPTextModel + CLIPTokenizer, PNDM scheduler), built from small configs and
    saved with save_pretrained: CI and benchmarks load it through load_pipeline like real weights."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    directory = Path(directory)
    tok_dir = directory / "_tokenizer_src"
    vocab_size = write_tiny_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet = UNet2DConditionModel(sample_size=sample_size // factor, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=(2, 4), norm_num_groups=32)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1)  # SD 1.x settings
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(directory))
    # Keep the tokenizer as RoentGen ships it (vocab.json + merges.txt), not the fast-tokenizer
    # file save_pretrained writes, so loading goes through the same files a checkout has.
    saved = directory / "tokenizer"
    (saved / "tokenizer.json").unlink(missing_ok=True)
    for f in tok_dir.iterdir():
        f.replace(saved / f.name)
    tok_dir.rmdir()
    return directory
