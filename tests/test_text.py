"""Question tokenizer, Dictionary and answer normalisation on hand-worked examples."""

from __future__ import annotations

from vqa_cp.text import (
    MAX_QUESTION_LENGTH,
    Dictionary,
    normalize_answer,
    normalize_official,
    process_digit_article,
    process_punctuation,
    tokenize,
)


def test_tokenize_lowers_drops_comma_and_question_mark_and_splits_possessive():
    assert tokenize("What is the man's shirt, color?") == ["what", "is", "the", "man", "'s", "shirt", "color"]
    assert tokenize("  Is   it?  ") == ["is", "it"]
    assert tokenize("") == []


def test_dictionary_ids_in_first_occurrence_order():
    d = Dictionary()
    d.add_sentence("What color is the cat?")
    d.add_sentence("What is the dog's name?")
    assert d.idx2word == ["what", "color", "is", "the", "cat", "dog", "'s", "name"]
    assert d.word2idx["dog"] == 5
    assert len(d) == 8 and d.padding_idx == 8
    assert Dictionary(d.idx2word).word2idx == d.word2idx


def test_encode_pads_on_the_left_to_14():
    d = Dictionary(["is", "it", "red"])
    assert MAX_QUESTION_LENGTH == 14
    assert d.encode("Is it red?") == [3] * 11 + [0, 1, 2]


def test_encode_keeps_the_first_14_words():
    words = [f"w{i}" for i in range(20)]
    d = Dictionary(words)
    assert d.encode(" ".join(words)) == list(range(14))


def test_unknown_words_map_to_padding_and_are_counted():
    d = Dictionary(["is", "it"])
    assert d.encode("is it purple or green") == [2] * 9 + [0, 1, 2, 2, 2]
    assert d.unknown_count == 3
    d.encode("purple")
    assert d.unknown_count == 4


def test_official_normalisation_examples():
    assert normalize_official("Two dogs.") == "2 dogs"
    assert normalize_official("the T-shirt!") == "t shirt"
    assert normalize_official("1,000 dollars") == "1000 dollars"
    assert normalize_official("dont know") == "don't know"
    assert normalize_official("2.5 m") == "2.5 m"


def test_normalize_answer_also_removes_commas():
    assert normalize_official("red, white") == "red white"  # ", " occurs: the comma is deleted
    assert normalize_official("red,white") == "red white"  # no space beside it: replaced by a space
    assert normalize_answer("1,2 a,b") == "12 ab"  # digit,digit anywhere: every comma deleted
    assert normalize_answer("Ten") == "10"
    for text in ["red,white", "red, white", "1,000", ",", "a , b,c"]:
        assert "," not in normalize_answer(text)



def test_normalize_official_shortcut_equals_both_steps_in_full():
    for text in ["red", "t-shirt -", "1,000", "x" + "." * 40, "Two dogs", "dont", "a", "2.5", "yes!", "", "a b"]:
        assert normalize_official(text) == process_digit_article(process_punctuation(text)), text
