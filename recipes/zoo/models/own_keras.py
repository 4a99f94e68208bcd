"""Keras models as teams write their own (random weights): a subclassed model with a custom
layer and two inputs, a text CNN over a dynamic sequence, a masked bidirectional LSTM, and a
functional attention encoder. Keras 3 on TensorFlow.
"""

from __future__ import annotations


def _keras(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras


def tabular(seed: int = 0):
    """A subclassed keras.Model: numeric features [batch, 8] float and a category id [batch]
    int -> logits [batch, 3], through a custom residual layer with LayerNormalization."""
    keras = _keras(seed)

    class Residual(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(units, activation="gelu")
            self.norm = keras.layers.LayerNormalization()

        def call(self, x):
            return self.norm(x + self.dense(x))

    class Tabular(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = keras.layers.Embedding(50, 8)
            self.stem = keras.layers.Dense(32)
            self.blocks = [Residual(32) for _ in range(2)]
            self.head = keras.layers.Dense(3)

        def call(self, numeric, category):
            x = self.stem(keras.ops.concatenate([numeric, self.embed(category)], axis=-1))
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    model = Tabular()
    model(keras.ops.zeros((2, 8)), keras.ops.zeros((2,), dtype="int64"))  # build the weights
    return model


def text_cnn(seed: int = 0):
    """Functional: token ids [batch, seq] -> class probabilities, Embedding + Conv1D + global max pool."""
    keras = _keras(seed)
    ids = keras.Input(shape=(None,), dtype="int64", name="ids")
    x = keras.layers.Embedding(1000, 32)(ids)
    x = keras.layers.Conv1D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv1D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    return keras.Model(ids, keras.layers.Dense(4, activation="softmax")(x))


def masked_lstm(seed: int = 0):
    """Sequential: token ids [batch, seq] with 0 as padding -> one score, Embedding(mask_zero)
    + Bidirectional(LSTM): the mask makes padded steps count for nothing."""
    keras = _keras(seed)
    return keras.Sequential(
        [
            keras.Input(shape=(None,), dtype="int64", name="ids"),
            keras.layers.Embedding(500, 16, mask_zero=True),
            keras.layers.Bidirectional(keras.layers.LSTM(16)),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def attention(seed: int = 0):
    """Functional: features [batch, seq, 16] -> [batch, 5] logits, a transformer block built from
    MultiHeadAttention, LayerNormalization and a Dense feed-forward, then average pooling."""
    keras = _keras(seed)
    x_in = keras.Input(shape=(None, 16), name="features")
    attn = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(x_in, x_in)
    x = keras.layers.LayerNormalization()(x_in + attn)
    ff = keras.layers.Dense(16)(keras.layers.Dense(32, activation="relu")(x))
    x = keras.layers.LayerNormalization()(x + ff)
    return keras.Model(x_in, keras.layers.Dense(5)(keras.layers.GlobalAveragePooling1D()(x)))
