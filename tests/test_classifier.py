"""edge.classifier's pure functions: quantization, dequantization, top-k."""

import numpy as np
import pytest

from edge.classifier import as_probabilities, dequantize, dequantize_table, quantize_input, top_k


def test_uint8_input_with_unit_scale_passes_decoder_bytes_unchanged():
    pixels = np.arange(0, 256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = quantize_input(pixels, np.uint8, 1.0, 0)
    assert out.dtype == np.uint8 and np.array_equal(out, pixels)


def test_int8_input_shifts_by_zero_point():
    pixels = np.array([[[0, 128, 255]]], dtype=np.uint8)
    out = quantize_input(pixels, np.int8, 1.0, -128)
    assert out.dtype == np.int8 and out.tolist() == [[[-128, 0, 127]]]
    every = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    assert np.array_equal(quantize_input(every, np.int8, 1.0, -128), every.astype(np.int16) - 128)


def test_float_input_keeps_raw_range():
    pixels = np.array([[[0, 255, 7]]], dtype=np.uint8)
    out = quantize_input(pixels, np.float32, 0.0, 0)
    assert out.dtype == np.float32 and out.tolist() == [[[0.0, 255.0, 7.0]]]


def test_dequantize_uint8_softmax_output():
    values = np.array([0, 128, 255], dtype=np.uint8)
    assert np.allclose(dequantize(values, 1 / 256, 0), [0, 0.5, 255 / 256])
    assert np.allclose(dequantize(np.array([-128, 127], np.int8), 1 / 256, -128), [0, 255 / 256])


def test_logits_get_softmax_probabilities_stay():
    probs = np.array([0.1, 0.7, 0.2], np.float32)
    assert np.allclose(as_probabilities(probs), probs)
    logits = np.array([2.0, -1.0, 0.5], np.float32)
    out = as_probabilities(logits)
    assert np.isclose(out.sum(), 1) and out.argmax() == 0


def test_top_k_orders_by_score_and_clamps_k():
    preds = top_k(np.array([0.1, 0.6, 0.3]), ["a", "b", "c"], 5)
    assert [p.label for p in preds] == ["b", "c", "a"]
    assert preds[0].index == 1 and abs(preds[0].score - 0.6) < 1e-9


@pytest.mark.parametrize(
    "dtype,scale,zero_point", [(np.uint8, 1 / 256, 0), (np.int8, 1 / 256, -128), (np.int8, 0.05, 3)]
)
def test_dequantize_table_matches_dequantize_for_every_code(dtype, scale, zero_point):
    codes = np.arange(256, dtype=np.uint8).view(dtype)
    table = dequantize_table(np.dtype(dtype), scale, zero_point)
    assert table.dtype == np.float32
    assert np.array_equal(table[codes.view(np.uint8)], dequantize(codes, scale, zero_point))
    assert dequantize_table(np.dtype(np.float32), 0.0, 0) is None


@pytest.mark.parametrize("classes", [5, 1000])
def test_top_k_short_and_long_paths_agree_with_a_stable_sort_on_ties(classes):
    rng = np.random.default_rng(classes)
    scores = rng.integers(0, 4, classes).astype(np.float32) / 4  # many ties
    labels = [f"c{i}" for i in range(classes)]
    expected = np.argsort(-scores, kind="stable")[:3]
    preds = top_k(scores, labels, 3)
    assert [p.index for p in preds] == expected.tolist()
    assert [p.label for p in preds] == [labels[i] for i in expected]
    assert all(isinstance(p.score, float) and p.score == scores[p.index] for p in preds)
