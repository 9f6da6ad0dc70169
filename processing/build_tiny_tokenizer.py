"""Build the tokenizer of the `tiny` preset (`processing/tiny-tokenizer/`) with the `tokenizers` library.

    python processing/build_tiny_tokenizer.py [--output processing/tiny-tokenizer]

A byte-level BPE (so any text encodes, nothing is ever unknown) trained on English text generated below from a
fixed seed: question and answer patterns about sounds, voices and music, like the built-in corpus's. It has 506
learned tokens (ids 0-505, the 256 byte symbols first) and six special tokens with fixed ids, which
`configuration/tiny.json` relies on:

    506 <|endoftext|>  (padding)      509 <|audio_pad|>    (audio placeholder, `audio_token_id`)
    507 <|im_start|>                  510 <|audio_start|>  (`audio_start_token_id`)
    508 <|im_end|>     (end of turn)  511 <|audio_end|>    (`audio_end_token_id`)

The result is deterministic: running the script again writes the same files.
"""

import argparse
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_pad|>", "<|audio_start|>", "<|audio_end|>"]
VOCAB_SIZE = 512
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "tiny-tokenizer"

SUBJECTS = ["the voice", "the sound", "the music", "the melody", "the speaker", "the noise", "the clip", "the tune"]
QUESTIONS = [
    "What kind of audio is this?",
    "Is the voice high or low?",
    "Which vowel does the speaker say?",
    "How many syllables do you hear?",
    "Is the tempo fast or slow?",
    "Does the melody go up or down?",
    "Which instrument is playing?",
    "Is the sound loud or quiet?",
    "How many events do you hear?",
    "What is making this sound?",
    "Answer with one word.",
    "Listen to the audio and answer the question.",
]
WORDS = [
    "speech", "music", "sound", "high", "low", "fast", "slow", "up", "down", "rising", "falling", "loud", "quiet",
    "one", "two", "three", "four", "five", "a", "i", "u", "e", "o", "rain", "wind", "siren", "knock", "engine",
    "bird", "water", "bell", "piano", "flute", "organ", "guitar", "drum", "violin", "voice", "yes", "no", "sine",
    "square", "saw", "chord", "note", "beat", "pitch", "vowel", "syllable", "tempo", "event", "source",
    "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as", "with", "his",
    "they", "at", "be", "this", "have", "from", "or", "had", "by", "word", "but", "not", "what", "all", "were", "we",
    "when", "your", "can", "said", "there", "use", "an", "each", "which", "she", "do", "how", "their", "if", "will",
    "other", "about", "out", "many", "then", "them", "these", "so", "some", "her", "would", "make", "like", "him",
    "into", "time", "has", "look", "more", "write", "go", "see", "number", "way", "could", "people", "my", "than",
    "first", "been", "call", "who", "its", "now", "find", "long", "day", "did", "get", "come", "made", "may",
    "part", "over", "new", "take", "only", "little", "work", "know", "place", "year", "live", "me", "back", "give",
    "most", "very", "after", "thing", "our", "just", "name", "good", "sentence", "man", "think", "say", "great",
    "where", "help", "through", "much", "before", "line", "right", "too", "mean", "old", "any", "same", "tell",
    "boy", "follow", "came", "want", "show", "also", "around", "form", "three", "small", "set", "put", "end",
    "does", "another", "well", "large", "must", "big", "even", "such", "because", "turn", "here", "why", "ask",
    "went", "men", "read", "need", "land", "different", "home", "us", "move", "try", "kind", "hand", "picture",
    "again", "change", "off", "play", "spell", "air", "away", "animal", "house", "point", "page", "letter",
    "mother", "answer", "found", "study", "still", "learn", "should", "world", "listen", "hear", "audio", "clip",
]
TEMPLATES = [
    "{q} {a}.",
    "{s} is {w}.",
    "I hear {w} in {s}.",
    "{s} sounds {w} and {w2}.",
    "The answer is {w}.",
    "{q}",
    "It is {w}, not {w2}.",
    "This is a {w} clip with {n} {w2} parts.",
]


def training_text(seed: int = 0, lines: int = 20000) -> list[str]:
    rng = random.Random(seed)
    numbers = ["one", "two", "three", "four", "five"] + [str(n) for n in range(100)]
    text = []
    for _ in range(lines):
        template = rng.choice(TEMPLATES)
        text.append(
            template.format(
                q=rng.choice(QUESTIONS), a=rng.choice(WORDS), s=rng.choice(SUBJECTS).capitalize(),
                w=rng.choice(WORDS), w2=rng.choice(WORDS), n=rng.choice(numbers),
            )
        )
    return text


def build_tokenizer(seed: int = 0) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(seed), trainer=trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL_TOKENS[1:],
    )
    ids = wrapped.convert_tokens_to_ids(SPECIAL_TOKENS)
    expected = list(range(VOCAB_SIZE - len(SPECIAL_TOKENS), VOCAB_SIZE))
    if ids != expected or len(wrapped) != VOCAB_SIZE:
        raise RuntimeError(f"special token ids {ids} (vocabulary {len(wrapped)}) differ from {expected}")
    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build_tokenizer(args.seed).save_pretrained(args.output)
    print(f"wrote the tiny tokenizer to {args.output}")


if __name__ == "__main__":
    main()
