"""offline.prompt_cache: the embedded endpoint's cache plays OpenAI's — the prefix is what comes
before the first image, cached once it reaches 1,024 tokens and was seen, counted in steps of
128, never more than the prompt — so the job's caching can be tested without a provider."""

from transforms.core.offline.prompt_cache import MINIMUM, STEP, PromptCache, prefix_of

LONG = "word " * 1200  # ~1,500 tokens


def _body(system, text="Describe it.", image="data:image/png;base64,AAAA"):
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": "after the image: not part of the prefix"},
                ],
            },
        ],
    }


def _answer(prompt_tokens=3000):
    return {"usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 5}}


def test_the_prefix_stops_at_the_first_image():
    one, n = prefix_of(_body(LONG, image="data:image/png;base64,AAAA"))
    two, m = prefix_of(_body(LONG, image="data:image/png;base64,BBBB"))
    assert one == two and n == m >= MINIMUM
    assert prefix_of(_body(LONG, text="Another prompt."))[0] != one


def test_a_long_prefix_seen_before_is_read_from_the_cache_in_steps():
    cache = PromptCache()
    first = cache.apply(_body(LONG), _answer())
    again = cache.apply(_body(LONG, image="data:image/png;base64,CCCC"), _answer())
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= MINIMUM and cached % STEP == 0 and cache.hits == 1
    # never more than the prompt the usage block counts
    small = cache.apply(_body(LONG), _answer(prompt_tokens=1100))
    assert small["usage"]["prompt_tokens_details"]["cached_tokens"] == 1100


def test_a_short_prefix_is_never_cached_and_old_prefixes_are_forgotten():
    cache = PromptCache(size=2)
    for _ in range(3):
        out = cache.apply(_body("Short system prompt."), _answer())
        assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    for i in range(3):  # three long prefixes through a cache of two: the first is evicted
        cache.apply(_body(f"{i} {LONG}"), _answer())
    out = cache.apply(_body(f"0 {LONG}"), _answer())
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
