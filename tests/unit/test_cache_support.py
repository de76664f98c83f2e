"""Cache kinds the loop cannot roll back are refused when the decoder is built, with a message
(guards: sliding-window and other cache kinds failed at different moments in the two loops)."""

import pytest

from draftsmith import BatchDecoder, DraftsmithError, SpeculativeDecoder
from draftsmith.cache import check_supported, layer_types, sliding_window
from tests.conftest import tiny_model


@pytest.mark.parametrize("face", [SpeculativeDecoder, BatchDecoder])
def test_a_recurrent_layer_is_refused_at_build_time(face):
    target = tiny_model("llama")
    target.model.config.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(DraftsmithError, match="linear_attention keep a state the loop cannot roll back"):
        face(target, "ngram")


def test_an_encoder_decoder_is_refused():
    target = tiny_model("llama")
    target.model.config.is_encoder_decoder = True
    with pytest.raises(DraftsmithError, match="encoder-decoder models are not supported"):
        check_supported(target.model, target.name)


def test_layer_kinds_and_window():
    config = tiny_model("llama").model.config
    assert set(layer_types(config)) == {"full_attention"} and sliding_window(config) is None
    config.layer_types, config.sliding_window = ["sliding_attention", "full_attention"], 8
    assert sliding_window(config) == 8
