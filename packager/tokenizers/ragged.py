"""Ragged plumbing for the tokenizer graphs, written once.

TF's own row-id helpers (``tf.repeat``, ``RaggedTensor.value_rowids``, ``tf.ragged.boolean_mask``)
build a ``[rows, longest row]`` intermediate, so one 1 MB sentence among many pieces needs
gigabytes. These are O(values) (or O(values * log rows)) instead. :func:`pointer_doubling` is the
one loop that follows parent pointers in log2(n) rounds (paths of a lattice, chains of matches).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf


# TF's own row-id helpers (``tf.repeat``, ``RaggedTensor.value_rowids``, ``tf.ragged.boolean_mask``)
# build a [rows, longest row] mask internally: a 1 MB sentence next to many short pieces would
# need gigabytes. These are O(values) (or O(values * log rows)) instead.
def splits_from_lengths(lengths: tf.Tensor) -> tf.Tensor:
    """int64 row lengths ``[R]`` -> row splits ``[R + 1]``."""
    return tf.concat([tf.zeros([1], tf.int64), tf.cumsum(tf.cast(lengths, tf.int64))], 0)


def rowids(splits: tf.Tensor) -> tf.Tensor:
    """Row splits ``[R + 1]`` -> the row of every value ``[splits[-1]]`` (int64)."""
    splits = tf.cast(splits, tf.int64)
    return tf.searchsorted(splits, tf.range(splits[-1]), side="right", out_type=tf.int64) - 1


def repeat_range(lengths: tf.Tensor) -> tf.Tensor:
    """``tf.repeat(tf.range(R), lengths)``, without the [R, max(lengths)] intermediate."""
    return rowids(splits_from_lengths(lengths))


def mask_rows(rt: tf.RaggedTensor, keep: tf.Tensor) -> tf.RaggedTensor:
    """The rows of a ragged ``[R, (n)]`` tensor where ``keep`` is true (``tf.ragged.boolean_mask``)."""
    rt = rt.with_row_splits_dtype(tf.int64)
    lens = tf.boolean_mask(rt.row_lengths(), keep)
    values = tf.boolean_mask(rt.values, tf.gather(keep, rowids(rt.row_splits)))
    return tf.RaggedTensor.from_row_splits(values, splits_from_lengths(lens), validate=False)


def doubling_rounds(n: tf.Tensor) -> tf.Tensor:
    """``ceil(log2(n + 1))``: rounds of pointer doubling that cover chains of length ``n``."""
    return tf.cast(tf.math.ceil(tf.math.log(tf.cast(n, tf.float64) + 1.0) / np.log(2.0)), tf.int32)


def pointer_doubling(jump: tf.Tensor, value: tf.Tensor, step: Callable, rounds: tf.Tensor) -> tf.Tensor:
    """Run ``value = step(i, value, jump); jump = jump[jump]`` for ``i`` in ``range(rounds)``.

    ``jump[k]`` is k's parent (a root points at itself). After round ``i`` the jump spans ``2**(i+1)``
    links, so ``rounds = doubling_rounds(longest chain)`` reaches every ancestor.
    """
    def body(i, value, jump):
        return i + 1, step(i, value, jump), tf.gather(jump, jump)

    _, value, _ = tf.while_loop(lambda i, *_: i < rounds, body, (tf.constant(0), value, jump))
    return value


def mark_ancestors(marked: tf.Tensor, parent: tf.Tensor, rounds: tf.Tensor) -> tf.Tensor:
    """int32 0/1 per node: marked, or an ancestor of a marked node (the nodes on the marked paths)."""
    n = tf.shape(parent)[0]
    return pointer_doubling(parent, marked,
                            lambda _i, on, jump: tf.maximum(on, tf.math.unsorted_segment_max(on, jump, n)), rounds)
