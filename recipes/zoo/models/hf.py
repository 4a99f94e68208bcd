"""Hugging Face transformers architectures built from small configs (random weights, no download).

Sizes are shrunk (hidden 64, 2 layers) so each builds in seconds on 2 cores;
the graph is the architecture's own. Every factory seeds its weights.
"""

from __future__ import annotations

import torch

# Per family: the config keys that set width, depth and heads.
SIZES = {
    "bert": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, max_position_embeddings=128),
    "roberta": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, max_position_embeddings=130),
    "xlm-roberta": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, max_position_embeddings=130),
    "electra": dict(hidden_size=64, embedding_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, max_position_embeddings=128),
    "albert": dict(hidden_size=64, embedding_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, max_position_embeddings=128),
    "deberta-v2": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        position_buckets=32,
        max_relative_positions=64,
    ),
    # relative-position buckets (log of the distance; log(0) = -inf in the branch `where` discards)
    "mpnet": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=130),
    "distilbert": dict(dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_position_embeddings=128),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=2, n_positions=128),
    "llama": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128),
    "mistral": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128, sliding_window=32
    ),
    "qwen2": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128),
    "phi": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=128),
    "bloom": dict(hidden_size=64, n_layer=2, n_head=4),
    "mamba": dict(hidden_size=64, num_hidden_layers=2, state_size=8),
    "t5": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
    "opt": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, ffn_dim=128, max_position_embeddings=128, word_embed_proj_dim=64),
    "gpt_neox": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=128),
    "gemma": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16, intermediate_size=128, max_position_embeddings=128
    ),
    "mixtral": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        num_local_experts=4,
        num_experts_per_tok=2,
    ),
    "xlnet": dict(d_model=64, n_layer=2, n_head=2, d_inner=128),
    # sliding-window attention over windows of 8 tokens (inputs are padded to a multiple of 8)
    "longformer": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, max_position_embeddings=130, attention_window=8),
    # two blocks: the sequence is pooled to half its length between them
    "funnel": dict(d_model=64, n_head=2, d_head=32, d_inner=128, block_sizes=[1, 1], num_decoder_layers=1, max_position_embeddings=128),
    "bart": dict(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=128,
    ),
}


def _config(arch: str, vocab: int, **extra):
    from transformers import AutoConfig

    return AutoConfig.for_model(arch, vocab_size=vocab, **SIZES[arch], **extra)


def classifier(arch: str = "bert", vocab: int = 1000, labels: int = 4, seed: int = 0):
    """A sequence classifier: input_ids, attention_mask -> logits [batch, labels]."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(_config(arch, vocab, num_labels=labels)).eval()


class MeanPooled(torch.nn.Module):
    """A sentence-embedding head as sentence-transformers builds it: masked mean pooling, L2 normalised."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def embedder(arch: str = "bert", vocab: int = 1000, seed: int = 0):
    """input_ids, attention_mask -> a normalised embedding [batch, hidden]."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    return MeanPooled(AutoModel.from_config(_config(arch, vocab))).eval()


def decoder(arch: str = "gpt2", vocab: int = 1000, seed: int = 0):
    """A causal LM without a cache: input_ids, attention_mask -> logits [batch, seq, vocab]."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_config(arch, vocab, use_cache=False)).eval()


def encoder_of(arch: str = "t5", vocab: int = 1000, seed: int = 0):
    """The encoder of an encoder-decoder model: input_ids, attention_mask -> last_hidden_state."""
    from transformers import AutoModel, T5EncoderModel

    torch.manual_seed(seed)
    if arch == "t5":
        return T5EncoderModel(_config(arch, vocab)).eval()
    return AutoModel.from_config(_config(arch, vocab)).get_encoder().eval()


def vision(arch: str = "vit", labels: int = 10, image: int = 32, seed: int = 0):
    """An image classifier: pixel_values [batch, 3, H, W] -> logits."""
    from transformers import AutoConfig, AutoModelForImageClassification, DeiTForImageClassification

    sizes = {
        "vit": dict(image_size=image, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
        "deit": dict(image_size=image, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
        "swin": dict(image_size=image, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4),
        "convnext": dict(image_size=image, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1]),
        # any input size: position embeddings interpolated (bicubic) to the patch grid
        "dinov2": dict(image_size=image, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2),
        # relative position bias per layer, mean-pooled patch tokens
        "beit": dict(
            image_size=image, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, use_relative_position_bias=True
        ),  # fmt: skip
        # MobileNet blocks and unfold/fold transformer blocks over 2x2 patches; output stride 32
        "mobilevit": dict(image_size=image, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 96], num_attention_heads=2),
    }[arch]
    torch.manual_seed(seed)
    config = AutoConfig.for_model(arch, num_labels=labels, **sizes)
    if arch == "deit":  # the auto class maps DeiT to two heads and cannot pick one without `architectures`
        return DeiTForImageClassification(config).eval()
    model = AutoModelForImageClassification.from_config(config)
    if arch == "mobilevit":
        _unit_batchnorm(model, (8, 3, image, image), seed)
    return model.eval()


def _unit_batchnorm(model: torch.nn.Module, shape: tuple[int, ...], seed: int = 0) -> None:
    """Batch norms with unit scale and statistics measured on random inputs. transformers initialises
    MobileViT's batch-norm scales from N(0, 0.02): through its 20-odd conv layers every logit then comes
    out exactly 0, which no parity check can judge. The weights stay random."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.weight.fill_(1.0)
            m.bias.zero_()
            m.reset_running_stats()
            m.momentum = None  # a plain average over the steps
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(shape, generator=gen))
    model.eval()


def segformer(labels: int = 5, seed: int = 0):
    """SegFormer (transformers config): pixel_values [batch, 3, H, W] -> logits [batch, labels, H/4, W/4]:
    overlapping patch embeddings, attention over spatially reduced keys, an all-MLP decoder."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    config = SegformerConfig(num_labels=labels, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[4, 2], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                             patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=32)  # fmt: skip
    return SegformerForSemanticSegmentation(config).eval()


def clip(part: str = "text", vocab: int = 1000, image: int = 32, seed: int = 0):
    """CLIP: the text tower (text_embeds), the vision tower (image_embeds), or both (logits_per_image)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64)
    vision = dict(image_size=image, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
    torch.manual_seed(seed)
    if part == "text":
        return CLIPTextModelWithProjection(config.text_config).eval()
    if part == "vision":
        return CLIPVisionModelWithProjection(config.vision_config).eval()
    return CLIPModel(config).eval()


def whisper_encoder(frames: int = 100, mels: int = 80, seed: int = 0):
    """Whisper's audio encoder: input_features [batch, mels, frames] -> last_hidden_state."""
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(num_mel_bins=mels, d_model=64, encoder_layers=2, encoder_attention_heads=2, decoder_layers=1, decoder_attention_heads=2,
                           encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=frames // 2, max_target_positions=32)  # fmt: skip
    torch.manual_seed(seed)
    return WhisperModel(config).get_encoder().eval()


def wav2vec2(seed: int = 0):
    """wav2vec2: raw audio [batch, samples] -> last_hidden_state."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, conv_dim=(32, 32, 32),
                            conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)  # fmt: skip
    torch.manual_seed(seed)
    return Wav2Vec2Model(config).eval()


def state_space(arch: str = "mamba", vocab: int = 1000, seed: int = 0):
    """A selective state-space model (Mamba): input_ids -> last_hidden_state. Without the CUDA
    kernels transformers runs its reference scan: a Python loop over the sequence."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(_config(arch, vocab, use_cache=False)).eval()


def seq2seq(arch: str = "t5", vocab: int = 1000, seed: int = 0):
    """A whole encoder-decoder without a cache: input_ids, attention_mask, decoder_input_ids ->
    logits [batch, target, vocab]; the source and target lengths are two dynamic dims."""
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(seed)
    return AutoModelForSeq2SeqLM.from_config(_config(arch, vocab, use_cache=False)).eval()


def patchtst(channels: int = 3, context: int = 64, horizon: int = 16, seed: int = 0):
    """PatchTST forecaster: past_values [batch, context, channels] -> [batch, horizon, channels]
    (per-series scaling, patching, a channel-independent transformer)."""
    from transformers import PatchTSTConfig, PatchTSTForPrediction

    config = PatchTSTConfig(num_input_channels=channels, context_length=context, patch_length=8, patch_stride=8, prediction_length=horizon,
                            d_model=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64)  # fmt: skip
    torch.manual_seed(seed)
    return PatchTSTForPrediction(config).eval()


def layoutlm(vocab: int = 1000, labels: int = 3, seed: int = 0):
    """LayoutLM document classifier: input_ids, bbox [batch, seq, 4] (0..1000 page coordinates),
    attention_mask -> logits."""
    from transformers import LayoutLMConfig, LayoutLMForSequenceClassification

    config = LayoutLMConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, num_labels=labels)
    torch.manual_seed(seed)
    return LayoutLMForSequenceClassification(config).eval()


def audio_spectrogram(mels: int = 32, frames: int = 64, labels: int = 5, seed: int = 0):
    """Audio Spectrogram Transformer: input_values [batch, frames, mels] -> logits."""
    from transformers import ASTConfig, ASTForAudioClassification

    config = ASTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, num_mel_bins=mels, max_length=frames,
                       frequency_stride=10, time_stride=10, num_labels=labels)  # fmt: skip
    torch.manual_seed(seed)
    return ASTForAudioClassification(config).eval()


def detr(labels: int = 5, queries: int = 10, seed: int = 0):
    """DETR object detector (ResNet backbone from transformers, no timm): pixel_values, pixel_mask
    -> logits [batch, queries, labels + 1] and pred_boxes [batch, queries, 4] (set prediction)."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], out_features=["stage2"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=queries,
                        num_labels=labels)  # fmt: skip
    torch.manual_seed(seed)
    return DetrForObjectDetection(config).eval()


def whisper(frames: int = 100, mels: int = 80, vocab: int = 1000, seed: int = 0):
    """The whole Whisper encoder-decoder without a cache (teacher-forced): input_features [batch, mels, frames],
    decoder_input_ids [batch, target] -> logits [batch, target, vocab]."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(vocab_size=vocab, num_mel_bins=mels, d_model=64, encoder_layers=2, encoder_attention_heads=2, decoder_layers=2,
                           decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=frames // 2,
                           max_target_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                           suppress_tokens=None, begin_suppress_tokens=None, use_cache=False)  # fmt: skip
    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(config).eval()


def hubert(seed: int = 0):
    """HuBERT: raw audio [batch, samples] -> last_hidden_state (wav2vec2's conv feature encoder, its own config)."""
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, conv_dim=(32, 32, 32),
                          conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)  # fmt: skip
    torch.manual_seed(seed)
    return HubertModel(config).eval()


def dpt(image: int = 64, seed: int = 0):
    """DPT monocular depth (ViT backbone, reassemble + fusion neck): pixel_values [batch, 3, S, S] ->
    predicted_depth [batch, 2S, 2S]. Square inputs only: with its own ViT, DPT takes the patch grid's side
    as sqrt(tokens). Its convs are re-drawn He-normal: from N(0, 0.02) the depth comes out near 1e-8."""
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128, image_size=image, patch_size=8,
                       backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32, head_hidden_size=16)  # fmt: skip
    torch.manual_seed(seed)
    model = DPTForDepthEstimation(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.zero_()
    return model.eval()


# Audio encoders with a convolutional feature extractor: samples -> frames by integer arithmetic (issue 26).
AUDIO = {
    "wavlm": ("WavLMConfig", "WavLMModel", dict(num_buckets=32, max_bucket_distance=64)),
    "sew": ("SEWConfig", "SEWModel", dict(squeeze_factor=2)),  # squeezes the frames by 2 and pads them back: another size rule
    "data2vec-audio": ("Data2VecAudioConfig", "Data2VecAudioModel", dict(num_conv_pos_embeddings=4, conv_pos_kernel_size=4)),
    "unispeech": ("UniSpeechConfig", "UniSpeechModel", {}),
}


def audio_encoder(arch: str = "wavlm", seed: int = 0):
    """A wav2vec2-style encoder of another family: raw audio [batch, samples] -> last_hidden_state."""
    import transformers

    config_name, model_name, extra = AUDIO[arch]
    sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, conv_dim=(32, 32, 32), conv_stride=(5, 4, 4),
                 conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)  # fmt: skip
    config = getattr(transformers, config_name)(**(sizes | extra))
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).eval()


def canine(seed: int = 0):
    """CANINE: a character-level encoder (Unicode code points) that downsamples the characters by 4 with a strided
    convolution and upsamples back: input_ids -> last_hidden_state [batch, chars, hidden]."""
    from transformers import CanineConfig, CanineModel

    config = CanineConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, downsampling_rate=4,
                          num_hash_functions=2, num_hash_buckets=64, local_transformer_stride=16, max_position_embeddings=256)  # fmt: skip
    torch.manual_seed(seed)
    return CanineModel(config).eval()


def mamba2(seed: int = 0, vocab: int = 1000):
    """Mamba-2 (transformers config, random weights): its torch path pads the sequence up to a multiple of its chunk
    size (8 here) and scans chunk by chunk: input_ids -> last_hidden_state."""
    from transformers import Mamba2Config, Mamba2Model

    config = Mamba2Config(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, state_size=16, num_heads=4, head_dim=32, expand=2, n_groups=1,
                          chunk_size=8, use_cache=False)  # fmt: skip
    torch.manual_seed(seed)
    return Mamba2Model(config).eval()
