"""Which attention implementation a stage runs, switched for one call and restored."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager


@contextmanager
def attention_implementation(config, implementation: str | None):
    """Run the modules that read `config` with another registered transformers attention implementation
    (None: unchanged), restored on the way out. Only this config changes, not its sub-configs (the
    streaming model's encoder reads its own `encoder_config`): transformers' `_attn_implementation` setter
    would recurse into them, so the value underneath it is set."""
    if implementation is None:
        yield
        return
    saved = config._attn_implementation_internal
    config._attn_implementation_internal = implementation
    try:
        yield
    finally:
        config._attn_implementation_internal = saved


@contextmanager
def attention_implementations(settings):
    """`attention_implementation` for several (config, implementation) pairs at once."""
    with ExitStack() as stack:
        for config, implementation in settings:
            stack.enter_context(attention_implementation(config, implementation))
        yield
