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


def structured(seed: int = 0):
    """The structured-data tutorial's model: preprocessing inside the model. Numeric columns
    [batch, 4] through an adapted Normalization, a raw integer code [batch, 1] through an
    IntegerLookup (a lookup table, out-of-vocabulary ids to index 0) and a one-hot
    CategoryEncoding, a Rescaling, then Dense layers with Dropout -> a probability."""
    import numpy as np

    keras = _keras(seed)
    rng = np.random.default_rng(seed)
    numeric = keras.Input(shape=(4,), dtype="float32", name="numeric")
    code = keras.Input(shape=(1,), dtype="int64", name="code")
    norm = keras.layers.Normalization()
    norm.adapt(rng.normal(50.0, 20.0, size=(256, 4)).astype("float32"))
    lookup = keras.layers.IntegerLookup(vocabulary=np.array([3, 7, 11, 19, 42, 101], dtype="int64"), output_mode="one_hot")
    x = keras.layers.concatenate([norm(numeric), keras.layers.Rescaling(0.5)(lookup(code))])
    x = keras.layers.Dense(32, activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    return keras.Model([numeric, code], keras.layers.Dense(1, activation="sigmoid")(x))


def video_gru(seed: int = 0):
    """Functional: frames [batch, time, 32, 32, 3] -> class logits: a small CNN applied per frame
    with TimeDistributed, then a GRU over a dynamic number of frames."""
    keras = _keras(seed)
    frames = keras.Input(shape=(None, 32, 32, 3), name="frames")
    cnn = keras.Sequential([keras.layers.Conv2D(8, 3, strides=2, activation="relu"), keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
                            keras.layers.GlobalAveragePooling2D()])  # fmt: skip
    x = keras.layers.TimeDistributed(cnn)(frames)
    x = keras.layers.GRU(32)(x)
    return keras.Model(frames, keras.layers.Dense(5)(x))
